"""The prior's contract between env runners and the replay: step infos, late priors, adapter versions.

The env side (:class:`~covr_ray.prior.client.PriorWrapper`) writes the ``INFO_*`` keys of
:mod:`covr_ray.columns` into each step's info; :func:`parse_step_infos` turns a chunk's infos into per-step
ids, priors and the adapter versions that answered them, :func:`late_priors` collects priors that arrived
after their step. Versions follow :mod:`covr_ray.lora.versions` (-1 = the base model); a prior's age is
``ord(serving) - ord(version)`` with :func:`version_ordinal`. Plain numpy, no RLlib.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from covr_ray.columns import (ACTION_BOUND_TOLERANCE, INFO_PRIOR_ACTION, INFO_PRIOR_LATE, INFO_PRIOR_MASK,
                              INFO_PRIOR_VERSION, INFO_STEP_ID)
from covr_ray.errors import ReplayError
from covr_ray.lora.versions import BASE_VERSION


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_version(version: Any, where: str) -> int:
    """An adapter version is an integer >= -1 (-1 = base model); returns it as int."""
    if not _is_int(version) or int(version) < BASE_VERSION:
        raise ReplayError(f"{where}: adapter version {version!r} is not an integer >= {BASE_VERSION} "
                          "(-1 = base model)")
    return int(version)


def check_prior_age_limit(serving_version: Any, max_age: Any) -> Tuple[int, Optional[int]]:
    """Validated ``(serving_version, max_age)`` of a prior age limit: the version an integer >= -1,
    ``max_age`` an integer >= 0 or None (never aged). Raises ReplayError naming the bad value."""
    serving = check_version(serving_version, "serving version")
    if max_age is not None and (not _is_int(max_age) or int(max_age) < 0):
        raise ReplayError(f"prior max_age {max_age!r} is not an integer >= 0 or None (never aged)")
    return serving, None if max_age is None else int(max_age)


def version_ordinal(version: Any) -> Any:
    """Age ordinal of adapter version(s): ``max(v, 0)`` (the base model -1 counts as version 0)."""
    return np.maximum(version, 0)


def check_prior(action: Any, action_dim: int, where: str) -> np.ndarray:
    """A prior must be ``action_dim`` finite floats in [-1, 1] (float round-off beyond is clipped)."""
    arr = np.asarray(action, dtype=np.float32).reshape(-1)
    if arr.shape != (action_dim,) or not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 1.0 + ACTION_BOUND_TOLERANCE):
        raise ReplayError(f"{where}: prior action {np.asarray(action).tolist()!r} is not {action_dim} finite "
                          "floats in [-1, 1] (the policy's normalised action space)")
    return np.clip(arr, -1.0, 1.0)


#: a late prior: ``(step_id, a_v (A,), adapter version)``.
LatePrior = Tuple[int, Any, int]


def parse_step_infos(infos: List[Dict[str, Any]], action_dim: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray, List[LatePrior]]:
    """Per-transition step ids and priors from the ``T`` step infos (``infos[t]`` from ``step(a_t)``),
    plus the late ``(step_id, a_v, version)`` triples found in them.

    The info returned by ``step(a_t)`` describes transition ``t`` = ``(o_t, a_t, r_t, o_t+1)``:
    ``INFO_STEP_ID`` is its id, ``INFO_PRIOR_ACTION`` / ``INFO_PRIOR_MASK`` / ``INFO_PRIOR_VERSION`` its
    prior ``a_v`` for ``o_t`` and the adapter version that answered it. Envs without the prior wrapper
    carry none of these keys: mask 0.

    Returns ``step_ids: (T,)`` int64 (-1 = none), ``prior_actions: (T, A)``, ``prior_masks: (T,)``,
    ``prior_versions: (T,)`` int32 (the adapter that answered; -1 = base model, and where there is no
    prior or the info has no ``INFO_PRIOR_VERSION``), late triples. A malformed prior or version raises
    ReplayError naming the step.
    """
    n = len(infos)
    step_ids = np.full(n, -1, np.int64)
    actions = np.zeros((n, action_dim), np.float32)
    masks = np.zeros(n, np.float32)
    versions = np.full(n, BASE_VERSION, np.int32)
    for t, info in enumerate(infos):
        if not info:
            continue
        if INFO_STEP_ID in info:
            step_ids[t] = int(info[INFO_STEP_ID])
        mask = float(info.get(INFO_PRIOR_MASK, 0.0))
        if mask not in (0.0, 1.0):
            raise ReplayError(f"step {step_ids[t]}: {INFO_PRIOR_MASK} must be 0.0 or 1.0, got {mask!r}")
        if mask == 1.0:
            if INFO_PRIOR_ACTION not in info:
                raise ReplayError(f"step {step_ids[t]}: {INFO_PRIOR_MASK} is 1 but {INFO_PRIOR_ACTION} is missing")
            actions[t] = check_prior(info[INFO_PRIOR_ACTION], action_dim, f"step {step_ids[t]}")
            masks[t] = 1.0
            versions[t] = check_version(info.get(INFO_PRIOR_VERSION, BASE_VERSION), f"step {step_ids[t]}")
    return step_ids, actions, masks, versions, late_priors(infos)


def late_priors(infos: List[Dict[str, Any]]) -> List[LatePrior]:
    """All late priors under ``INFO_PRIOR_LATE`` in the given infos, as ``(step_id, a_v, version)``
    triples; a ``(step_id, a_v)`` pair (older wrappers) gets version -1. Raises ReplayError on any other
    entry or a version that is not an integer >= -1."""
    out: List[LatePrior] = []
    for info in infos:
        for item in (info or {}).get(INFO_PRIOR_LATE, ()) or ():
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ReplayError(f"{INFO_PRIOR_LATE} entries must be (step_id, action, version) triples "
                                  f"(or (step_id, action) pairs), got {item!r}")
            version = check_version(item[2], f"late prior for step {item[0]}") if len(item) == 3 else BASE_VERSION
            out.append((int(item[0]), item[1], version))
    return out
