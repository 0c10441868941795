"""Grouping of runs: the ``--group-by`` key (a dotted config key) and the group label of a run.

Runs are grouped by ``(preset, group label)``; without ``--group-by`` the label is ``""``, so a preset's
runs form one group.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from covr_ray.errors import ReportError


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


def group_label(config: dict[str, Any], group_by: Optional[str]) -> str:
    """A run's group label: the value of ``group_by`` in its config dict (JSON for a mapping or list), or
    ``""`` without ``group_by``.

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
