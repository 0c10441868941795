"""Loading a COVR run's configuration: defaults <- a preset <- an ``extra`` mapping <- ``--set`` overrides.

Presets are YAML data under ``covr_ray/presets/`` (a preset may ``extends:`` another; files starting with
``_`` are shared bases); ``--set section.field=value`` values are YAML. A run directory's ``config.yaml``
(:func:`save_config`) is read back with :func:`config_from_dict`. The schema is :mod:`covr_ray.config.schema`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from covr_ray.config.schema import CovrConfig
from covr_ray.errors import ConfigError, PresetNotFoundError
from covr_ray.log import get_logger
from covr_ray.typed_data import build_dataclass, merge_dicts

log = get_logger(__name__)

PRESET_DIR = Path(__file__).parent.parent / "presets"


def available_presets() -> list[str]:
    """Names of the presets shipped with the package (files starting with ``_`` are bases only)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = PRESET_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise PresetNotFoundError(name, available_presets())


def load_preset_data(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raw preset mapping with ``extends:`` resolved (a preset may extend one other preset)."""
    if name in _seen:
        raise ConfigError("extends", name, "an acyclic chain of presets", hint=" -> ".join(_seen + (name,)))
    path = _preset_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("preset", str(path), "a valid YAML mapping", hint=str(exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError("preset", str(path), "a YAML mapping at top level")
    parent = data.pop("extends", None)
    if parent is not None:
        data = merge_dicts(load_preset_data(str(parent), _seen + (name,)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"sac.lam=2.0"`` -> (["sac", "lam"], 2.0). The value is parsed as a YAML scalar/list/mapping."""
    if "=" not in text:
        raise ConfigError("--set", text, "section.field=value (e.g. sac.lam=2.0)")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", text, "section.field=value (e.g. sac.lam=2.0)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, raw, "a YAML value (number, true/false, null, string, [list])") from exc
    return keys, value


def load_config(preset: str = "driving-hw", overrides: Optional[list[str]] = None,
                extra: Optional[dict[str, Any]] = None) -> CovrConfig:
    """Build and validate a config: defaults <- preset <- ``extra`` mapping <- ``--set`` overrides."""
    data = load_preset_data(preset)
    data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    if extra:
        data = merge_dicts(data, extra)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
    return build_dataclass(CovrConfig, _check_removed(data, drop=False)).validate()


#: Fields that existed in earlier releases, with what replaced them. A run directory's config.yaml written
#: then still loads (:func:`config_from_dict` drops them with a warning); asking for one in a preset or with
#: ``--set`` is a ConfigError saying it was removed.
REMOVED_FIELDS: dict[tuple[str, str], str] = {
    ("sac", "sample_path"): "removed: replay batches always go to the learner as columns (the 'episodes' "
                            "path existed only for a parity test)",
}


def _check_removed(data: dict[str, Any], drop: bool) -> dict[str, Any]:
    out = dict(data)
    for (section, name), why in REMOVED_FIELDS.items():
        if isinstance(out.get(section), dict) and name in out[section]:
            if not drop:
                raise ConfigError(f"{section}.{name}", out[section][name], "nothing: this field was " + why)
            log.warning("config: %s.%s=%r ignored (%s)", section, name, out[section][name], why)
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def config_from_dict(data: dict[str, Any]) -> CovrConfig:
    """Rebuild a validated config from ``to_dict()`` output (e.g. a run directory's config.yaml); fields of
    :data:`REMOVED_FIELDS` a run written by an earlier release carries are dropped with a warning."""
    return build_dataclass(CovrConfig, _check_removed(data, drop=True)).validate()


def save_config(cfg: CovrConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from covr_ray.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
