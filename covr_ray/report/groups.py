"""Grouping of runs, each group's base, and the paper's numbers that match a group.

**Groups.** Runs are grouped per preset by the config fields that *differ* between the preset's runs:
two runs are in one group when they agree on every such field. Not counted (they do not make a variant):
``seed``, ``preset`` (rows are per preset anyway) and the run-local fields of :data:`RUN_LOCAL`
(``run_dir``, where Ray, CARLA or the HTTP endpoint listen, CPU/GPU shares, timeouts, logging,
``schedule.checkpoint_every``). A field the run does not use is not counted for it either: with
``prior.enabled=false`` the prior, EDDF, RALW, LoRA and round-schedule fields (:data:`PRIOR_ONLY`) change
nothing, so base runs group together whatever those say. A group's label is its values of the differing
fields (``prior.enabled=false, sac.base=sac``), or, for runs made by ``covr sweep``, the sweep's variant
name when the group's runs are exactly one variant's. ``--group-by KEY`` instead splits a preset's runs by
that one key's value (the label is the value), pooling whatever else differs.

**Base.** A group's base, for the probability of improvement: in a sweep, the group of the sweep's
``base_variant``; for runs made by hand, the group with ``prior.enabled=false`` that agrees with the group
on the most other fields (none when two tie).

**Paper.** ``paper_numbers.yaml`` (package data) holds the paper's reported numbers per scenario; a
group shows a paper row when the preset is one of the scenario's presets and the group's config has every
value the row's ``match`` names.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from covr_ray.errors import ReportError

if TYPE_CHECKING:
    from covr_ray.report.runs import RunRecord

#: Run-local config fields: where and how a run executed, not what it computed. Exact keys, or prefixes
#: ending in ``.``.
RUN_LOCAL: tuple[str, ...] = (
    "seed", "preset", "run_dir", "device", "logging.", "schedule.checkpoint_every",
    "ray.address", "ray.get_timeout_s", "ray.restart_failed_env_runners", "ray.max_actor_restarts",
    "ray.num_cpus_per_env_runner", "ray.num_cpus_prior", "ray.num_cpus_lora", "ray.num_gpus_learner",
    "ray.num_gpus_prior", "ray.num_gpus_lora",
    "env.carla.host", "env.carla.port", "env.carla.tm_port", "env.carla.server_command", "env.carla.timeout_s",
    "env.carla.reconnect_attempts", "env.carla.reconnect_backoff_s", "env.carla.server_start_wait_s",
    "prior.http_port", "prior.http_host", "prior.gpu_memory_utilization", "prior.vllm_engine_process",
)
#: Fields a run with ``prior.enabled=false`` does not use (no VLM, no rounds, lambda 0).
PRIOR_ONLY: tuple[str, ...] = (
    "prior.", "eddf.", "ralw.", "lora.", "sac.lam", "sac.prior_action_source", "sac.prior_gate",
    "schedule.first_interval", "schedule.max_interval", "schedule.cold_start_rounds", "ray.prior_replicas",
)
_PRIOR_SWITCH = "prior.enabled"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (``sac.base``) of a config dict.

    Raises:
        ReportError: the key does not exist in this config, naming the keys available at the failing level.
    """
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            options = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise ReportError(f"--group-by {key!r}: {where} has no key {part!r}; available: {options}")
        node = node[part]
    return node


def format_value(value: Any) -> str:
    """A config value as ``--set`` writes it: ``true``, ``null``, ``2.0``, ``rad``, JSON for lists/mappings."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def group_label(config: dict[str, Any], group_by: Optional[str]) -> str:
    """The ``--group-by`` label of a run: the value of ``group_by`` in its config dict (JSON for a mapping
    or list), or ``""`` without ``group_by``.

    Raises:
        ReportError: see :func:`config_value`.
    """
    if not group_by:
        return ""
    value = config_value(config, group_by)
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def check_group_key(key: str) -> None:
    """Refuse a ``--group-by`` key that no config can have. Keys inside open-ended mappings
    (``env.kwargs.<name>``) are accepted; runs lacking them are then skipped with the reason.

    Raises:
        ReportError: naming the key and the keys available where it failed.
    """
    from covr_ray.config import CovrConfig

    node: Any = CovrConfig().to_dict()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and not node and i > 0:
            return  # an open-ended mapping such as env.kwargs
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            options = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise ReportError(f"--group-by {key!r}: {where} has no key {part!r}; available: {options}")
        node = node[part]


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"sac": {"lam": 2.0}}`` -> ``{"sac.lam": 2.0}``; an empty mapping is one leaf (``env.kwargs: {}``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def active_fields(flat: dict[str, Any]) -> dict[str, Any]:
    """The fields of a flattened config that can make a variant: no run-local field, and no prior-only field
    when ``prior.enabled`` is false."""
    return {k: v for k, v in flat.items() if not _matches(k, RUN_LOCAL) and not _unused(k, flat)}


_ABSENT = "\x00<unset>"


def _unused(key: str, active: dict[str, Any]) -> bool:
    """Whether a run does not use ``key`` (a prior-only field of a run with the prior off)."""
    return active.get(_PRIOR_SWITCH) is False and key != _PRIOR_SWITCH and _matches(key, PRIOR_ONLY)


def differing_fields(configs: list[dict[str, Any]]) -> list[str]:
    """Sorted keys whose value differs between the runs that use them (``configs``: :func:`active_fields`
    of each run); a key one run sets and another (using it) lacks differs."""
    out = []
    for key in sorted(set().union(*configs)) if configs else []:
        values = {json.dumps(c[key], sort_keys=True, default=str) if key in c else _ABSENT
                  for c in configs if key in c or not _unused(key, c)}
        if len(values) > 1:
            out.append(key)
    return out


def fields_label(active: dict[str, Any], keys: list[str]) -> str:
    """``"prior.enabled=false, sac.base=sac"``: the run's values of the ``keys`` it uses (``<unset>`` for
    one it lacks)."""
    return ", ".join(f"{k}={format_value(active[k])}" if k in active else f"{k}=<unset>"
                     for k in keys if k in active or not _unused(k, active))


@dataclass
class GroupInfo:
    """One (preset, group) of the report."""

    preset: str
    label: str
    config: str
    """The group's values of its preset's differing fields (``""`` when nothing differs)."""
    members: list["RunRecord"]
    common: dict[str, Any] = field(default_factory=dict)
    """Active fields all the group's runs share (with their value)."""
    base: Optional[str] = None
    """Label of the group's base group in the same preset, or None."""


def assign_groups(runs: list["RunRecord"], group_by: Optional[str] = None
                  ) -> tuple[list[GroupInfo], dict[str, list[str]]]:
    """Set each run's ``group`` label; return the groups (sorted by preset, label) and, per preset, the
    fields that define its groups (``[group_by]`` with ``--group-by``).

    Raises:
        ReportError: ``group_by`` names a key a run's config lacks (see :func:`config_value`).
    """
    groups: list[GroupInfo] = []
    fields_by_preset: dict[str, list[str]] = {}
    for preset in sorted({r.preset for r in runs}):
        members = [r for r in runs if r.preset == preset]
        active = [active_fields(flatten_config(r.config)) for r in members]
        if group_by:
            keys = [group_by]
            signature = [group_label(r.config, group_by) for r in members]
        else:
            keys = differing_fields(active)
            signature = [fields_label(a, keys) for a in active]
        fields_by_preset[preset] = keys
        by_sig: dict[str, list[int]] = {}
        for i, sig in enumerate(signature):
            by_sig.setdefault(sig, []).append(i)
        variants_of = {sig: {members[i].variant for i in idx} for sig, idx in by_sig.items()}
        preset_groups = []
        for sig, idx in by_sig.items():
            names = variants_of[sig]
            label = sig
            if not group_by and len(names) == 1 and None not in names:
                name = next(iter(names))
                if sum(name in v for v in variants_of.values()) == 1:
                    label = name  # exactly one variant's runs: its sweep name
            group_active = [active[i] for i in idx]
            common = {k: v for k, v in group_active[0].items()
                      if all(k in a and a[k] == v for a in group_active[1:])}
            preset_groups.append(GroupInfo(preset=preset, label=label, config="" if group_by else sig,
                                           members=[members[i] for i in idx], common=common))
        if len({g.label for g in preset_groups}) < len(preset_groups):  # a variant name equal to a fields label
            for g in preset_groups:
                g.label = g.config or g.label
        for g in preset_groups:
            for r in g.members:
                r.group = g.label
        _assign_bases(preset_groups)
        groups += sorted(preset_groups, key=lambda g: g.label)
    return groups, fields_by_preset


def _assign_bases(groups: list[GroupInfo]) -> None:
    """Set each group's ``base`` (see the module docstring)."""
    for g in groups:
        sweep_bases = {(r.sweep, r.base_variant) for r in g.members}
        if len(sweep_bases) == 1:
            sweep, base_variant = next(iter(sweep_bases))
            if sweep is not None and base_variant is not None:
                found = [b for b in groups if b is not g and b.members
                         and all(r.sweep == sweep and r.variant == base_variant for r in b.members)]
                if len(found) == 1:
                    g.base = found[0].label
                    continue
                if any(r.variant == base_variant for r in g.members):
                    continue  # the base itself
        if g.common.get(_PRIOR_SWITCH) is not True:
            continue
        candidates = [b for b in groups if b.common.get(_PRIOR_SWITCH) is False]
        scored = sorted(((sum(1 for k, v in b.common.items() if k != _PRIOR_SWITCH and g.common.get(k, _ABSENT) == v),
                          b.label) for b in candidates), reverse=True)
        if scored and (len(scored) == 1 or scored[0][0] > scored[1][0]):
            g.base = scored[0][1]


# --- the paper's numbers ---------------------------------------------------------------------------------

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


@functools.lru_cache(maxsize=1)
def paper_numbers() -> dict[str, Any]:
    """The ``scenarios`` of ``paper_numbers.yaml``: ``{scenario: {table, presets, rows: [{method, return,
    distance_m, match}]}}``.

    Raises:
        ReportError: the file is missing or malformed (a packaging error).
    """
    import yaml

    try:
        data = yaml.safe_load(PAPER_FILE.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReportError(f"cannot read the paper's numbers {PAPER_FILE}: {exc}") from exc
    scenarios = data.get("scenarios") if isinstance(data, dict) else None
    if not isinstance(scenarios, dict) or not all(
            isinstance(s, dict) and isinstance(s.get("rows"), list) and isinstance(s.get("presets"), list)
            for s in scenarios.values()):
        raise ReportError(f"{PAPER_FILE} must hold scenarios: {{name: {{table, presets: [...], rows: [...]}}}}")
    return scenarios


def paper_scenario(preset: str) -> Optional[tuple[str, dict[str, Any]]]:
    """``(scenario, its entry)`` of the paper's numbers for ``preset``, or None."""
    for name, scenario in paper_numbers().items():
        if preset in scenario["presets"]:
            return name, scenario
    return None


def _same(key: str, want: Any, have: Any) -> bool:
    if key == "prior.model" and isinstance(want, str) and isinstance(have, str):
        # a hub id or a local copy of it: compare the last path component, case-insensitively
        return Path(want.rstrip("/")).name.lower() == Path(have.rstrip("/")).name.lower()
    if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(have, (int, float)):
        return float(want) == float(have)
    return bool(want == have)


def paper_match(preset: str, common: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The paper row whose ``match`` values the group's shared config all has (the first such row of the
    preset's scenario), with ``table`` added; None without one."""
    found = paper_scenario(preset)
    if found is None:
        return None
    _name, scenario = found
    for row in scenario["rows"]:
        match = row.get("match")
        if isinstance(match, dict) and all(k in common and _same(k, v, common[k]) for k, v in match.items()):
            return dict(row, table=scenario.get("table", ""))
    return None
