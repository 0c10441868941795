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

Quantized ONNX (``quantize="fp16" | "int8"``) uses onnxruntime's tooling: ``int8`` =
``quantize_static`` (QDQ, s8 weights, u8 activations, MinMax calibration on the even-indexed recorded
observations; per-channel and per-tensor weights are both tried, the smaller max action error kept),
``fp16`` = ``convert_float_to_float16(keep_io_types=True)``. The float model is exported and verified
first; the quantized one must then stay within ``max_action_err`` (:data:`DEFAULT_MAX_ACTION_ERR`) of the
torch policy's actions on observations recorded by :func:`record_observations` (a deterministic rollout of
the run's env driven by the policy: the states it visits, not noise a calibrated model is not meant for),
else :class:`QuantizationError` and nothing is written. The figures go into ``manifest["quantization"]``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
import torch

from covr_deploy.errors import DeployError
from covr_deploy.manifest import FORMATS, MANIFEST_FILE, MANIFEST_VERSION, MODEL_FILES, sha256_file, validate_manifest
from covr_ray.errors import DependencyMissingError, ExportError
from covr_ray.io import atomic_write_text
from covr_ray.log import get_logger
from covr_ray.rl.networks import PixelPolicy
from covr_ray.run_dir import RunDir

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.config import EnvSection

log = get_logger(__name__)

DEFAULT_ATOL = 1e-4
"""Largest accepted |exported - torch| action difference."""
ONNX_OPSET = 17
INPUT_NAME = "obs"
OUTPUT_NAME = "action"
QUANTIZE_MODES = ("none", "fp16", "int8")
DEFAULT_MAX_ACTION_ERR = {"fp16": 0.01, "int8": 0.05}
"""Default bound on max |quantized - float| action (actions in [-1, 1]) per mode; ``--max-action-err``."""
DEFAULT_OBSERVATIONS = 128
"""Recorded observations a quantized export is calibrated (int8: the even half) and checked on."""
QUANTIZED_MODEL_FILES = {"fp16": "policy.fp16.onnx", "int8": "policy.int8.onnx"}


class QuantizationError(ExportError):
    """The quantized model's actions differ from the float policy's by more than the stated bound."""

    def __init__(self, mode: str, measured: float, bound: float, observations: int) -> None:
        super().__init__(f"{mode} model differs from the float policy by {measured:.4g} (max abs action error over "
                         f"{observations} recorded observations); the bound is {bound:.4g}. Nothing was written. "
                         f"Raise --max-action-err if that error is acceptable, or export with a wider format "
                         f"({'fp16 or ' if mode == 'int8' else ''}--quantize none)")
        self.mode, self.measured, self.bound, self.observations = mode, measured, bound, observations


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


def check_quantize(quantize: str, fmt: str, max_action_err: Optional[float] = None,
                   observations: int = DEFAULT_OBSERVATIONS) -> float:
    """Check the quantization arguments before anything is loaded or rolled out; return the bound. Raises
    ExportError (unknown mode, non-ONNX format), ConfigError (bound outside (0, 2], observations < 2) or
    DependencyMissingError (onnxruntime's tooling absent)."""
    from covr_ray.errors import ConfigError

    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize mode {quantize!r} is not supported; allowed: {', '.join(QUANTIZE_MODES)}")
    if quantize == "none":
        return 0.0
    if fmt != "onnx":
        raise ExportError(f"--quantize {quantize} needs --format onnx (onnxruntime's tooling), got {fmt!r}")
    bound = DEFAULT_MAX_ACTION_ERR[quantize] if max_action_err is None else max_action_err
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0.0 < float(bound) <= 2.0:
        raise ConfigError("--max-action-err", max_action_err, "a number in (0, 2] (actions lie in [-1, 1])")
    if isinstance(observations, bool) or not isinstance(observations, int) or not 2 <= observations <= 100_000:
        raise ConfigError("--observations", observations, "an integer in 2..100000")
    try:
        import onnxruntime.quantization  # noqa: F401
        import onnxruntime.transformers.float16  # noqa: F401
    except ImportError as exc:
        raise DependencyMissingError("onnxruntime", f"{quantize} export", extra="export") from exc
    return float(bound)


def record_observations(policy: PixelPolicy, env_cfg: "EnvSection", count: int, seed: int) -> np.ndarray:
    """``(count, C, H, W)`` uint8: the observations of a deterministic rollout of ``env_cfg``'s env driven by
    the policy's own ``tanh(mean)`` actions; episode ``k`` resets with ``seed + k``."""
    from covr_envs.registry import make_env_from_config

    env = make_env_from_config(env_cfg, seed)
    recorded: list[np.ndarray] = []
    episode = 0
    try:
        obs, _ = env.reset(seed=seed % 2**32)
        while len(recorded) < count:
            recorded.append(np.asarray(obs, dtype=np.uint8))
            with torch.no_grad():
                action = policy(torch.from_numpy(recorded[-1][None]))[0].numpy()
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=(seed + episode) % 2**32)
    finally:
        env.close()
    return np.stack(recorded)


def measure_action_error(expected: np.ndarray, artifact_dir: Path, observations: np.ndarray) -> dict[str, float]:
    """Max and mean |runtime action - ``expected``| over ``observations`` (``(N, C, H, W)`` uint8), batched
    (chunks of 32) and one at a time through :class:`covr_deploy.Policy`; ``max_abs_held_out`` is over the odd
    indices (not used for int8 calibration)."""
    from covr_deploy import Policy

    try:
        runtime = Policy.load(artifact_dir)
    except DeployError as exc:
        raise ExportError(f"quantized artifact {artifact_dir} does not load: {exc}") from exc
    batched = np.concatenate([runtime.act(observations[i:i + 32]) for i in range(0, len(observations), 32)])
    single = np.stack([runtime.act(o) for o in observations])
    if batched.shape != expected.shape or single.shape != expected.shape:
        raise ExportError(f"quantized model returns actions of shape {batched.shape}, torch gives {expected.shape}")
    err = np.maximum(np.abs(batched - expected), np.abs(single - expected))
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "max_abs_held_out": float(err[1::2].max())}


def _quantize_onnx(float_path: Path, out_path: Path, mode: str, calibration: np.ndarray, per_channel: bool) -> None:
    """Write ``mode``'s model of ``float_path`` to ``out_path`` with onnxruntime's tooling."""
    import onnx

    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True), str(out_path))
        return
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT_NAME: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self._batches, None)

    prepared = out_path.with_name(f"prepared-{out_path.name}")
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    prepared.unlink()


def _quantize_staged(policy: PixelPolicy, manifest: dict[str, Any], staging: Path, mode: str,
                     observations: np.ndarray, bound: float, source: str) -> tuple[dict[str, Any], Path]:
    """Quantize the verified float model in ``staging``; return the best candidate's manifest and directory,
    or raise QuantizationError when even its max action error exceeds ``bound``."""
    import onnxruntime

    with torch.no_grad():
        expected = policy(torch.from_numpy(observations)).numpy()
    float_path = staging / manifest["model_file"]
    best: Optional[tuple[dict[str, Any], Path]] = None
    for per_channel in ((True, False) if mode == "int8" else (False,)):
        cand_dir = staging / f"{mode}-{'per-channel' if per_channel else 'per-tensor'}"
        cand_dir.mkdir()
        path = cand_dir / QUANTIZED_MODEL_FILES[mode]
        try:
            _quantize_onnx(float_path, path, mode, observations[0::2], per_channel)
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ExportError(f"onnxruntime could not make the {mode} model: {exc}") from exc
        method = ("convert_float_to_float16 (keep_io_types)" if mode == "fp16" else
                  f"quantize_static QDQ s8 weights ({'per-channel' if per_channel else 'per-tensor'}), "
                  "u8 activations, MinMax")
        cand = {**manifest, "model_file": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
        atomic_write_text(cand_dir / MANIFEST_FILE, json.dumps(validate_manifest(cand), indent=2) + "\n")
        err = measure_action_error(expected, cand_dir, observations)
        cand["quantization"] = {
            "mode": mode, "method": method, "max_action_err": bound, "action_err_max": err["max_abs"],
            "action_err_mean": err["mean_abs"], "action_err_max_held_out": err["max_abs_held_out"],
            "observations": len(observations), "observations_source": source,
            "calibration_observations": len(observations[0::2]) if mode == "int8" else 0,
            "float_model_sha256": manifest["sha256"], "float_size_bytes": manifest["size_bytes"],
            "float_verification": manifest["verification"], "onnxruntime_version": onnxruntime.__version__}
        cand["verification"] = {"max_abs_diff": err["max_abs"], "observations": len(observations), "atol": bound,
                                "source": source}
        log.info("%s candidate %s: max action error %.3g, mean %.3g", mode, method, err["max_abs"], err["mean_abs"])
        if best is None or err["max_abs"] < best[0]["quantization"]["action_err_max"]:
            best = (cand, cand_dir)
    assert best is not None  # at least one candidate ran
    measured = best[0]["quantization"]["action_err_max"]
    if not measured <= bound:
        raise QuantizationError(mode, measured, bound, len(observations))
    return best


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
                  samples: int = 16, seed: int = 0, atol: float = DEFAULT_ATOL, quantize: str = "none",
                  observations: Optional[np.ndarray] = None, max_action_err: Optional[float] = None,
                  observations_source: str = "given") -> dict[str, Any]:
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
        samples, seed, atol: verification settings of the float model, see :func:`verify_artifact`.
        quantize: ``none``, ``fp16`` or ``int8`` (ONNX only): the artifact is the quantized model instead.
        observations: ``(N, C, H, W)`` uint8, N >= 2, needed when quantizing: int8 calibrates on the even
            indices; the action error is measured on all of them (see :func:`record_observations`).
        max_action_err: bound on the quantized model's max abs action error (default per mode,
            :data:`DEFAULT_MAX_ACTION_ERR`).
        observations_source: where ``observations`` come from, stored in the manifest.

    Raises:
        ExportError: unknown format, failed export, or verification failure (``out_dir`` is untouched).
        QuantizationError: the quantized model exceeds ``max_action_err`` (``out_dir`` is untouched).
        DependencyMissingError: onnx / onnxruntime absent for ``onnx``.
    """
    fmt = _check_format(fmt)
    obs_count = DEFAULT_OBSERVATIONS if observations is None else len(observations)
    bound = check_quantize(quantize, fmt, max_action_err, obs_count)
    if quantize != "none":
        obs_shape = tuple(policy.encoder.obs_shape)
        if observations is None or observations.dtype != np.uint8 or tuple(observations.shape[1:]) != obs_shape:
            got = None if observations is None else (observations.dtype, observations.shape)
            raise ExportError(f"{quantize} export needs recorded observations (N, *{obs_shape}) uint8, got {got}")
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
        if quantize != "none":
            assert observations is not None  # checked above
            manifest, model_dir = _quantize_staged(policy, manifest, staging, quantize, observations, bound,
                                                   observations_source)
            model_path = model_dir / manifest["model_file"]
            diff = manifest["verification"]["max_abs_diff"]
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(model_path, "rb") as fh:
            os.fsync(fh.fileno())  # the rename below must not expose a file whose data is not on disk
        os.replace(model_path, out_dir / model_path.name)
        atomic_write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s%s policy to %s (%.2f MB, max abs diff %.2g)", fmt,
             "" if quantize == "none" else f" {quantize}", out_dir, manifest["size_bytes"] / 1e6, diff)
    return manifest


def export_run(run_dir: str | Path, fmt: str = "onnx", out_dir: Optional[str | Path] = None, *,
               quantize: str = "none", max_action_err: Optional[float] = None,
               observations: int = DEFAULT_OBSERVATIONS, obs_seed: Optional[int] = None,
               **kwargs: Any) -> tuple[dict[str, Any], Path]:
    """``covr export``: export the run's policy artifact (:attr:`RunDir.policy`) to ``out_dir`` (default
    :attr:`RunDir.export`; when ``run_dir`` is a ``policy.pt`` file, ``export/`` beside it); return
    ``(manifest, out_dir)``. With ``quantize``, ``observations`` are first recorded on the run's env
    (``config.yaml``; reset seed ``obs_seed``, default the run's eval seed). Bad arguments are refused
    (:func:`check_quantize`) before the policy is loaded."""
    from covr_ray.evaluate import eval_seed
    from covr_ray.policy_io import load_policy, resolve_policy_path

    bound = check_quantize(quantize, _check_format(fmt), max_action_err, observations)
    policy, meta = load_policy(run_dir)
    base = Path(run_dir) if Path(run_dir).is_dir() else Path(run_dir).parent
    target = Path(out_dir) if out_dir is not None else RunDir(base).export
    recorded, source = None, "given"
    if quantize != "none":
        roots = [base, resolve_policy_path(run_dir).parent.parent]  # the run of RUN_DIR/policy/policy.pt
        run = next((RunDir(r) for r in roots if RunDir(r).config_path.is_file()), None)
        if run is None:
            raise ExportError(f"--quantize {quantize} records observations of the run's env, but no "
                              f"{RunDir(base).config_path.name} was found in {' or '.join(map(str, roots))}; "
                              "pass the run directory")
        cfg = run.read_config()
        seed = eval_seed(cfg) if obs_seed is None else int(obs_seed)
        recorded = record_observations(policy.eval(), cfg.env, observations, seed)
        source = (f"deterministic rollout of {cfg.env.name} (run {run.root}) with the policy's tanh(mean) "
                  f"actions, reset seeds {seed}+k")
    manifest = export_policy(policy, meta, target, fmt, quantize=quantize, observations=recorded,
                             max_action_err=bound if quantize != "none" else None, observations_source=source,
                             **kwargs)
    return manifest, target
