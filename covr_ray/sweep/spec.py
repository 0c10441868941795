"""The sweep spec (``covr sweep SPEC.yaml``): a grid of named variants x seeds of one preset, validated
with typed errors before anything starts.

Format (YAML)::

    preset: driving-hw               # a preset name, or a path to a preset YAML file
    seeds: [0, 1, 2]                 # one run per variant and seed
    base_variant: base               # optional: the variant the others are compared to (P(variant > base))
    total_env_steps: 100000          # optional: --set schedule.total_env_steps=N for every run
    common: ["logging.wandb=false"]  # optional: --set strings for every run
    variants:                        # name -> its --set strings (an empty list or null: the preset as is)
      covr: []
      base: ["prior.enabled=false"]
      eddf-random: ["eddf.mode=random"]
    vlm_eval:                        # optional; absent = no VLM evaluation
      episodes: 5                    # episodes per adapter version
      every_frame: false             # optional, default false: query every frame instead of every prior_every

A run's config is ``load_config(preset, common + variant + [schedule.total_env_steps] + [seed, run_dir])``,
the same as ``covr train --preset P --set ... --seed S --run-dir DIR``. ``seed``, ``run_dir``, ``preset`` and
``ray.address`` belong to the sweep and may not be set in ``common`` or a variant.

``vlm_eval`` adds a step after each finished run whose config has ``prior.enabled=true`` and that has
adapters: ``covr eval RUN_DIR --actor vlm --adapter all --episodes N [--every-frame] --json``, the VLM alone
as the policy per fine-tune iteration (:mod:`covr_ray.sweep.vlm_stage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from covr_ray.config import CovrConfig, load_config, load_preset_data, parse_override
from covr_ray.errors import ConfigError

SPEC_KEYS = ("preset", "seeds", "variants", "base_variant", "common", "total_env_steps", "vlm_eval")
VLM_EVAL_KEYS = ("episodes", "every_frame")
#: Fields the sweep sets itself (per run), refused in ``common`` and variants.
SWEEP_OWNED = ("seed", "run_dir", "preset", "ray.address")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOTAL = "schedule.total_env_steps"


class SweepSpecError(ConfigError):
    """A sweep spec field is missing or invalid; ``field`` is its path in the spec (``variants.base[0]``)."""

    def __init__(self, field: str, value: Any, allowed: str, hint: str = "", spec_path: Optional[Path] = None) -> None:
        super().__init__(field, value, allowed, hint)
        where = f"{spec_path}: " if spec_path else ""
        self.args = (f"{where}sweep spec field {field!r}: got {value!r}; allowed: {allowed}"
                     + (f". {hint}" if hint else ""),)


@dataclass(frozen=True)
class RunPlan:
    """One run of the grid."""

    variant: str
    seed: int
    run_dir: Path
    """``<out>/<variant>/s<seed>``, absolute."""
    preset: str
    overrides: tuple[str, ...]
    """Its ``--set`` strings (common, variant, total env steps), without seed and run_dir."""

    @property
    def rel(self) -> str:
        """``<variant>/s<seed>``: the run directory relative to the sweep's output directory."""
        return f"{self.variant}/s{self.seed}"

    def config(self) -> CovrConfig:
        """The run's config as ``covr train`` will build it."""
        return load_config(self.preset, list(self.overrides) + [f"seed={self.seed}", f"run_dir={self.run_dir}"])


@dataclass(frozen=True)
class VLMEvalSpec:
    """The spec's ``vlm_eval``: evaluate the VLM as the policy per adapter version after each run."""

    episodes: int
    """Episodes per adapter version (``covr eval --episodes``)."""
    every_frame: bool = False
    """Query the VLM every agent step (``--every-frame``) instead of every ``prior.prior_every`` steps."""

    def to_dict(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "every_frame": self.every_frame}


@dataclass
class SweepSpec:
    """A validated sweep spec (see the module docstring)."""

    preset: str
    seeds: list[int]
    variants: dict[str, list[str]]
    base_variant: Optional[str] = None
    common: list[str] = field(default_factory=list)
    total_env_steps: Optional[int] = None
    vlm_eval: Optional[VLMEvalSpec] = None
    """None: no VLM evaluation step."""
    path: Optional[Path] = None

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "seeds": list(self.seeds),
                "variants": {k: list(v) for k, v in self.variants.items()},
                "base_variant": self.base_variant, "common": list(self.common),
                "total_env_steps": self.total_env_steps,
                "vlm_eval": self.vlm_eval.to_dict() if self.vlm_eval is not None else None}

    def overrides(self, variant: str) -> list[str]:
        """The ``--set`` strings of ``variant``'s runs (common, the variant's, the total env steps)."""
        extra = [f"{_TOTAL}={self.total_env_steps}"] if self.total_env_steps is not None else []
        return list(self.common) + list(self.variants[variant]) + extra

    def plans(self, out: Path) -> list[RunPlan]:
        """Every run, seed-major (all variants of the first seed first: a partial sweep compares variants
        early)."""
        out = Path(out).resolve()
        return [RunPlan(name, seed, out / name / f"s{seed}", self.preset, tuple(self.overrides(name)))
                for seed in self.seeds for name in self.variants]

    def config(self, variant: str, seed: int) -> CovrConfig:
        """The config of ``variant``'s run with ``seed`` (run_dir unset)."""
        return load_config(self.preset, self.overrides(variant) + [f"seed={seed}"])


def _set_strings(value: Any, where: str, spec_path: Optional[Path]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepSpecError(where, value, "a list of --set strings such as [\"prior.enabled=false\"]",
                             spec_path=spec_path)
    for i, text in enumerate(value):
        try:
            keys, _ = parse_override(text)
        except ConfigError as exc:
            raise SweepSpecError(f"{where}[{i}]", text, "section.field=value", hint=str(exc),
                                 spec_path=spec_path) from exc
        key = ".".join(keys)
        if key in SWEEP_OWNED:
            raise SweepSpecError(f"{where}[{i}]", text, f"any field but {', '.join(SWEEP_OWNED)}",
                                 hint="the sweep sets these per run (seeds: the `seeds` list; run_dir: --out)",
                                 spec_path=spec_path)
    return list(value)


def _vlm_eval(value: Any, spec_path: Optional[Path]) -> Optional[VLMEvalSpec]:
    if value is None:
        return None
    from covr_ray.evaluate import MAX_EPISODES  # (imports torch: only for a spec that asks for the step)

    if not isinstance(value, dict):
        raise SweepSpecError("vlm_eval", value, "a mapping with episodes (and optionally every_frame)",
                             spec_path=spec_path)
    unknown = sorted(set(value) - set(VLM_EVAL_KEYS), key=str)
    if unknown:
        raise SweepSpecError(f"vlm_eval.{unknown[0]}", value[unknown[0]], "one of the vlm_eval keys "
                             + ", ".join(VLM_EVAL_KEYS), spec_path=spec_path)
    episodes = value.get("episodes")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or not 1 <= episodes <= MAX_EPISODES:
        raise SweepSpecError("vlm_eval.episodes", episodes, f"an integer in 1..{MAX_EPISODES} (episodes per "
                             "adapter version)", spec_path=spec_path)
    every_frame = value.get("every_frame", False)
    if not isinstance(every_frame, bool):
        raise SweepSpecError("vlm_eval.every_frame", every_frame, "true or false (true: a VLM query every agent "
                             "step; false: every prior.prior_every steps)", spec_path=spec_path)
    return VLMEvalSpec(episodes=episodes, every_frame=every_frame)


def validate_spec(data: Any, spec_path: Optional[Path] = None) -> SweepSpec:
    """Check a spec mapping field by field and resolve every variant's config.

    Raises:
        SweepSpecError: the first invalid field, naming it, its value and what is allowed; a variant whose
            ``--set`` strings do not make a valid config (the config error as the hint); two variants
            with the same config.
    """
    from covr_ray.report.groups import active_fields, flatten_config

    def bad(field: str, value: Any, allowed: str, hint: str = "") -> SweepSpecError:
        return SweepSpecError(field, value, allowed, hint, spec_path)

    if not isinstance(data, dict):
        raise bad("", data, "a mapping with " + ", ".join(SPEC_KEYS))
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise bad(unknown[0], data[unknown[0]], "one of the spec keys " + ", ".join(SPEC_KEYS))
    preset = data.get("preset")
    if not isinstance(preset, str) or not preset.strip():
        raise bad("preset", preset, "a preset name (`covr presets`) or a path to a preset YAML file")
    try:
        load_preset_data(preset)
    except ConfigError as exc:
        raise bad("preset", preset, "a preset name (`covr presets`) or a path to a preset YAML file", str(exc)) from exc
    seeds = data.get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds)):
        raise bad("seeds", seeds, "a non-empty list of integers in [0, 2**31)")
    if len(set(seeds)) != len(seeds):
        raise bad("seeds", seeds, "distinct seeds")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise bad("variants", variants, "a non-empty mapping of variant name -> list of --set strings")
    for name in variants:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise bad(f"variants.{name}", name, "a name of letters, digits, '_', '.', '-' (64 at most, not "
                      "starting with '.', '_' or '-'): it names the variant's directory")
    common = _set_strings(data.get("common"), "common", spec_path)
    total = data.get("total_env_steps")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
        raise bad("total_env_steps", total, "an integer >= 1 (env steps of every run)")
    sets = {name: _set_strings(value, f"variants.{name}", spec_path) for name, value in variants.items()}
    if total is not None:
        for where, strings in [("common", common)] + [(f"variants.{n}", s) for n, s in sets.items()]:
            for i, text in enumerate(strings):
                if ".".join(parse_override(text)[0]) == _TOTAL:
                    raise bad(f"{where}[{i}]", text, f"no {_TOTAL} when the spec sets total_env_steps",
                              "set it in one place")
    base = data.get("base_variant")
    if base is not None and base not in sets:
        raise bad("base_variant", base, "one of the variants: " + ", ".join(sets))
    vlm_eval = _vlm_eval(data.get("vlm_eval"), spec_path)
    spec = SweepSpec(preset=preset, seeds=list(seeds), variants=sets, base_variant=base, common=common,
                     total_env_steps=total, vlm_eval=vlm_eval, path=spec_path)
    seen: dict[str, str] = {}
    for name in sets:
        try:
            cfg = spec.config(name, seeds[0])
        except ConfigError as exc:
            raise bad(f"variants.{name}", sets[name], "--set strings that make a valid config with the "
                      "common ones", str(exc)) from exc
        key = repr(sorted(active_fields(flatten_config(cfg.to_dict())).items()))
        if key in seen:
            raise bad(f"variants.{name}", sets[name], "a config that differs from every other variant's",
                      f"it runs the same config as variant {seen[key]!r}")
        seen[key] = name
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file.

    Raises:
        SweepSpecError: the file is missing, not YAML, or a field is invalid (see :func:`validate_spec`).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SweepSpecError("", str(path), "a readable sweep spec file (YAML)", str(exc)) from exc
    except yaml.YAMLError as exc:
        raise SweepSpecError("", str(path), "a YAML mapping", str(exc), spec_path=path) from exc
    return validate_spec(data, path)
