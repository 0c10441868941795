"""Export the policy network to ONNX or TorchScript, with a manifest, verified against torch.

    covr export runs/driving-hw-0 --format onnx            # -> runs/driving-hw-0/export/
    from covr_deploy import Policy; Policy.load("runs/driving-hw-0/export").act(obs)

The exported model maps ``obs: (B, C, H, W) uint8`` to ``action: (B, A) float32`` in [-1, 1] (the
deterministic ``tanh(mean)`` of the actor; pixels are scaled to [0, 1] inside the model). The artifact
directory holds the model file (``policy.onnx`` or ``policy.torchscript.pt``) and ``manifest.json``
(layout in :mod:`covr_deploy.manifest`).

Every export is verified before it replaces anything: the staged artifact is loaded with the deploy
runtime (:class:`covr_deploy.Policy`, the code users run) and must reproduce the torch policy's actions on
random observations (plus all-black and all-white ones) within ``atol`` (default 1e-4), single and batched;
otherwise :class:`~covr_ray.errors.ExportError`. The max abs diff is stored in the manifest.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``, opset 17), which needs no ``onnxscript``;
it is deprecated in torch >= 2.9 but present in 2.13.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from covr_deploy.errors import DeployError
from covr_deploy.manifest import FORMATS, MANIFEST_FILE, MANIFEST_VERSION, MODEL_FILES, sha256_file, validate_manifest
from covr_ray.errors import DependencyMissingError, ExportError
from covr_ray.io import atomic_write_text
from covr_ray.log import get_logger
from covr_ray.rl.networks import PixelPolicy
from covr_ray.run_dir import RunDir

log = get_logger(__name__)

DEFAULT_ATOL = 1e-4
"""Largest accepted |exported - torch| action difference."""
ONNX_OPSET = 17
INPUT_NAME = "obs"
OUTPUT_NAME = "action"


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx":
        for package in ("onnx", "onnxruntime"):
            try:
                __import__(package)
            except ImportError as exc:
                raise DependencyMissingError(package, "ONNX export", extra="export") from exc
    return fmt


def _write_model(policy: PixelPolicy, fmt: str, path: Path) -> None:
    """Write ``policy`` in ``fmt`` to ``path``; the example input is one uint8 observation."""
    example = torch.zeros((1, *policy.encoder.obs_shape), dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "onnx":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter says it is legacy
                torch.onnx.export(policy, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
                traced = torch.jit.trace(policy, (example,), check_trace=True)
                torch.jit.save(traced, str(path))


def verification_inputs(obs_shape: tuple[int, ...], samples: int, seed: int) -> np.ndarray:
    """``(samples + 2, C, H, W)`` uint8: ``samples`` random observations, then all-0 and all-255 ones."""
    rng = np.random.default_rng(seed)
    rand = rng.integers(0, 256, size=(samples, *obs_shape), dtype=np.uint8)
    edges = np.stack([np.zeros(obs_shape, np.uint8), np.full(obs_shape, 255, np.uint8)])
    return np.concatenate([rand, edges], axis=0)


def verify_artifact(policy: PixelPolicy, artifact_dir: str | Path, samples: int = 16, seed: int = 0,
                    atol: float = DEFAULT_ATOL) -> float:
    """Max |deploy runtime action - torch action| over random observations, batched and one at a time.

    Raises:
        ExportError: the artifact does not load, or the difference is >= ``atol``.
    """
    from covr_deploy import Policy

    try:
        runtime = Policy.load(artifact_dir)
    except DeployError as exc:
        raise ExportError(f"exported artifact {artifact_dir} does not load: {exc}") from exc
    obs = verification_inputs(tuple(policy.encoder.obs_shape), samples, seed)
    with torch.no_grad():
        expected = policy.eval()(torch.from_numpy(obs)).numpy()
    batched = runtime.act(obs)
    single = np.stack([runtime.act(o) for o in obs])
    if batched.shape != expected.shape or single.shape != expected.shape:
        raise ExportError(f"exported model returns actions of shape {batched.shape} (batched) / {single.shape} "
                          f"(single), torch gives {expected.shape}")
    diff = float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()))
    if not diff < atol:
        raise ExportError(f"exported {runtime.format} model at {artifact_dir} differs from the torch policy by "
                          f"{diff:.3g} (max abs action difference over {len(obs)} observations); allowed < {atol}")
    return diff


def build_manifest(policy: PixelPolicy, meta: Mapping[str, Any], fmt: str, model_path: Path) -> dict[str, Any]:
    """The manifest of ``model_path`` (see :mod:`covr_deploy.manifest`)."""
    obs_shape = [int(v) for v in policy.encoder.obs_shape]
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION, "format": fmt, "model_file": model_path.name,
        "sha256": sha256_file(model_path), "size_bytes": model_path.stat().st_size,
        "obs_shape": obs_shape, "obs_dtype": "uint8", "action_dim": int(policy.actor.action_dim),
        "action_dtype": "float32", "action_low": -1.0, "action_high": 1.0,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "frame_stack": int(meta.get("frame_stack", obs_shape[0] // 3)),
        "image_size": int(meta.get("image_size", obs_shape[1])),
        "env": meta.get("env"), "env_steps": meta.get("env_steps"), "preset": meta.get("preset"),
        "seed": meta.get("seed"), "action_repeat": meta.get("action_repeat"), "network": meta.get("network"),
        "parameters": int(sum(p.numel() for p in policy.parameters())),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
    }
    if fmt == "onnx":
        manifest["onnx_opset"] = ONNX_OPSET
    return validate_manifest(manifest, "exported manifest")


def export_policy(policy: PixelPolicy, meta: Mapping[str, Any], out_dir: str | Path, fmt: str = "onnx", *,
                  samples: int = 16, seed: int = 0, atol: float = DEFAULT_ATOL) -> dict[str, Any]:
    """Export ``policy`` into ``out_dir`` (model file + ``manifest.json``), verified; return the manifest.

    The artifact is staged in a temp directory beside ``out_dir`` and verified there; only then are the
    model file and (last) the manifest moved into ``out_dir``, each by an atomic rename. A previous
    artifact of the same format is replaced; the manifest always names the newest export.

    Args:
        policy: the torch policy (``obs (B, C, H, W) uint8 -> (B, A)``).
        meta: the policy's meta (:func:`covr_ray.policy_io.load_policy`): env, env_steps, preset, seed,
            frame_stack, image_size, network.
        out_dir: artifact directory (created).
        fmt: ``onnx`` or ``torchscript``.
        samples, seed, atol: verification settings, see :func:`verify_artifact`.

    Raises:
        ExportError: unknown format, failed export, or verification failure (``out_dir`` is untouched).
        DependencyMissingError: onnx / onnxruntime absent for ``onnx``.
    """
    fmt = _check_format(fmt)
    policy = policy.cpu().eval()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    try:
        model_path = staging / MODEL_FILES[fmt]
        try:
            _write_model(policy, fmt, model_path)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ExportError(f"torch could not export the policy to {fmt}: {exc}") from exc
        manifest = build_manifest(policy, meta, fmt, model_path)
        atomic_write_text(staging / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        diff = verify_artifact(policy, staging, samples=samples, seed=seed, atol=atol)
        manifest["verification"] = {"max_abs_diff": diff, "observations": samples + 2, "atol": atol, "seed": seed}
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(model_path, "rb") as fh:
            os.fsync(fh.fileno())  # the rename below must not expose a file whose data is not on disk
        os.replace(model_path, out_dir / model_path.name)
        atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s policy to %s (%.2f MB, max abs diff %.2g)", fmt, out_dir,
             manifest["size_bytes"] / 1e6, diff)
    return manifest


def export_run(run_dir: str | Path, fmt: str = "onnx", out_dir: Optional[str | Path] = None,
               **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """``covr export``: export the run's policy artifact (:attr:`RunDir.policy`) to ``out_dir`` (default
    :attr:`RunDir.export`; when ``run_dir`` is a ``policy.pt`` file, ``export/`` beside it).

    Returns:
        ``(manifest, out_dir)``.
    """
    from covr_ray.policy_io import load_policy

    policy, meta = load_policy(run_dir)
    base = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    target = Path(out_dir) if out_dir is not None else RunDir(base).export
    return export_policy(policy, meta, target, fmt, **kwargs), target
