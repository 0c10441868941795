"""The policy artifact of a run: ``policy/policy.pt`` in the run directory (:attr:`RunDir.policy`).

One file holds everything needed to rebuild and run the deployable policy (encoder + actor, see
:class:`covr_ray.rl.networks.PixelPolicy`) with no Ray, no RLlib and no VLM::

    {"format_version": 1,
     "spec": NetworkSpec.to_dict(),
     "state_dict": {"encoder.*": tensor, "actor.*": tensor},
     "meta": {"env", "image_size", "frame_stack", "action_dim", "env_steps", "preset", "seed", ...}}

The orchestrator writes it at each checkpoint and at the end of a run (``run`` is its
:class:`~covr_ray.run_dir.RunDir`)::

    from covr_ray.policy_io import policy_meta, save_policy
    save_policy(run.policy, network_spec_for(algo), policy_state_dict(algo),
                policy_meta(cfg, env_steps=n, action_dim=spec.action_dim))

and eval / export read it back with :func:`load_policy`. It is written atomically (temp file + rename) and
read with ``torch.load(weights_only=True)``: no pickled code runs on load.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch

from covr_ray.errors import CheckpointError
from covr_ray.io import atomic_write_bytes
from covr_ray.rl.networks import NetworkSpec, PixelPolicy, build_policy
from covr_ray.run_dir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.config import CovrConfig

POLICY_FORMAT_VERSION = 1
"""Version of the ``policy.pt`` layout; bump it when the layout changes."""
REQUIRED_META: dict[str, type] = {
    "env": str, "image_size": int, "frame_stack": int, "action_dim": int, "env_steps": int,
    "preset": str, "seed": int,
}
"""Keys every artifact's ``meta`` must hold, with their types. Extra keys (numbers, strings, bools, None,
lists of those) are kept as they are."""
_META_SCALARS = (str, int, float, bool, type(None))


def resolve_policy_path(path: str | Path) -> Path:
    """Accept a ``policy.pt`` file, a directory holding one, or a run directory (:attr:`RunDir.policy`).

    Raises:
        CheckpointError: none of these exists.
    """
    path = Path(path)
    in_run = RunDir(path).policy
    for candidate in (path, path / in_run.name, in_run):
        if candidate.is_file():
            return candidate
    relative = in_run.relative_to(path)
    raise CheckpointError(f"no policy artifact at {path}: expected a {in_run.name} file, a directory holding "
                          f"one, or a run directory with {relative} (written by `covr train` at each checkpoint)")


def policy_meta(cfg: "CovrConfig", env_steps: int, action_dim: int, **extra: Any) -> dict[str, Any]:
    """The ``meta`` dict of a run's policy: env name, observation shape, action dim, env steps, preset, seed.

    ``extra`` adds keys (e.g. ``round=3``); values must be JSON scalars or lists of them.
    """
    meta: dict[str, Any] = {
        "env": cfg.env.name, "image_size": int(cfg.env.image_size), "frame_stack": int(cfg.env.frame_stack),
        "action_repeat": int(cfg.env.action_repeat), "action_dim": int(action_dim), "env_steps": int(env_steps),
        "preset": cfg.preset, "seed": int(cfg.seed),
    }
    meta.update(extra)
    return meta


def _check_meta(meta: Any, spec: NetworkSpec, where: str) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{where}: meta must be a dict, got {type(meta).__name__}")
    out = dict(meta)
    for key, tp in REQUIRED_META.items():
        if key not in out:
            raise CheckpointError(f"{where}: meta lacks {key!r}; required keys: {', '.join(REQUIRED_META)}")
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, tp):
            raise CheckpointError(f"{where}: meta[{key!r}] = {value!r} must be of type {tp.__name__}")
    for key, value in out.items():
        items = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or not all(isinstance(v, _META_SCALARS) for v in items):
            raise CheckpointError(f"{where}: meta[{key!r}] = {value!r} is not a JSON scalar or a list of them")
    if out["env_steps"] < 0:
        raise CheckpointError(f"{where}: meta['env_steps'] = {out['env_steps']} must be >= 0")
    expected = (3 * out["frame_stack"], out["image_size"], out["image_size"])
    if tuple(spec.obs_shape) != expected:
        raise CheckpointError(f"{where}: network obs_shape {tuple(spec.obs_shape)} does not match meta "
                              f"(3 * frame_stack {out['frame_stack']}, image_size {out['image_size']}) = {expected}")
    if spec.action_dim != out["action_dim"]:
        raise CheckpointError(f"{where}: network action_dim {spec.action_dim} != meta action_dim {out['action_dim']}")
    return out


def _to_tensors(state_dict: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
        tensor = tensor.detach().to("cpu").contiguous().clone()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: weight {key!r} holds NaN or inf values; refusing a broken policy")
        out[str(key)] = tensor
    return out


def _build(spec: NetworkSpec, state_dict: dict[str, torch.Tensor], where: str) -> PixelPolicy:
    try:
        return build_policy(spec, state_dict)
    except (RuntimeError, KeyError, ValueError) as exc:  # load_state_dict(strict=True) mismatches
        raise CheckpointError(f"{where}: weights do not fit the network spec {spec.to_dict()}: {exc}") from exc


def save_policy(path: str | Path, spec: NetworkSpec, state_dict: Mapping[str, Any],
                meta: Mapping[str, Any]) -> Path:
    """Write the policy artifact atomically and return its path.

    Args:
        path: the ``policy.pt`` file to write (parents are created), e.g. :attr:`RunDir.policy`.
        spec: shapes of the networks; ``spec.obs_shape`` must be ``(3 * frame_stack, S, S)``.
        state_dict: ``encoder.*`` and ``actor.*`` weights (torch tensors or numpy arrays, as returned by
            :func:`covr_ray.rl.algo.policy_state_dict`); must load strictly into ``build_policy(spec)``.
        meta: at least :data:`REQUIRED_META` (see :func:`policy_meta`).

    Raises:
        CheckpointError: meta incomplete or inconsistent with ``spec``, weights that do not fit the spec,
            or non-finite weights.
    """
    path = Path(path)
    where = f"policy artifact {path}"
    meta_out = _check_meta(meta, spec, where)
    tensors = _to_tensors(state_dict, where)
    _build(spec, tensors, where)  # refuse weights that would not load back
    payload = {"format_version": POLICY_FORMAT_VERSION, "spec": spec.to_dict(), "state_dict": tensors,
               "meta": meta_out}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_policy_artifact(path: str | Path) -> tuple[NetworkSpec, dict[str, torch.Tensor], dict[str, Any]]:
    """Read and validate an artifact without building the network: ``(spec, state_dict, meta)``.

    Raises:
        CheckpointError: missing file, not a policy artifact, another format version, or bad content.
    """
    path = resolve_policy_path(path)
    where = f"policy artifact {path}"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where} is unreadable (truncated or not a torch file): {exc}") from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{where} is not a COVR policy artifact (no 'format_version' key)")
    version = payload["format_version"]
    if version != POLICY_FORMAT_VERSION:
        raise CheckpointError(f"{where} has format_version {version!r}; this covr-ray reads version "
                              f"{POLICY_FORMAT_VERSION}")
    for key in ("spec", "state_dict", "meta"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{where}: entry {key!r} is missing or not a dict")
    try:
        spec = NetworkSpec.from_dict(payload["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed network spec {payload['spec']!r}: {exc}") from exc
    meta = _check_meta(payload["meta"], spec, where)
    state_dict = _to_tensors(payload["state_dict"], where)
    return spec, state_dict, meta


def load_policy(path: str | Path) -> tuple[PixelPolicy, dict[str, Any]]:
    """Rebuild the deployable policy (eval mode, CPU) and return it with its meta.

    ``path``: a ``policy.pt``, a directory holding one, or a run directory.

    Returns:
        ``(policy, meta)``; ``policy(obs: (B, C, H, W) uint8) -> (B, A) float32`` in [-1, 1].

    Raises:
        CheckpointError: see :func:`read_policy_artifact`; also weights that do not fit the spec.
    """
    spec, state_dict, meta = read_policy_artifact(path)
    policy = _build(spec, state_dict, f"policy artifact {resolve_policy_path(path)}")
    meta["network"] = spec.to_dict()
    return policy, meta
