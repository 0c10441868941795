"""Run an exported COVR policy: ONNX through onnxruntime, TorchScript through torch. No Ray, no RLlib.

    from covr_deploy import Policy
    policy = Policy.load("runs/driving-hw-0/export")     # reads manifest.json, checks the sha256
    action = policy.act(obs)       # obs (C, H, W) uint8 -> (A,) float32 in [-1, 1]
    actions = policy.act(batch)    # (B, C, H, W) uint8 -> (B, A)

The ONNX path imports onnxruntime only (not torch); the TorchScript path imports torch only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from covr_deploy.errors import DeployError, ObservationError
from covr_deploy.framestack import FrameStacker
from covr_deploy.manifest import read_manifest, sha256_file


def _onnx_backend(model_path: Path, manifest: dict[str, Any], device: str,
                  num_threads: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeployError("ONNX artifacts need onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu for device='cuda')") from exc
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeployError(f"device 'cuda' asked but onnxruntime offers only {ort.get_available_providers()}; "
                              "install onnxruntime-gpu or use device='cpu'")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    in_name, out_name = manifest["input_name"], manifest["output_name"]

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run([out_name], {in_name: batch})[0]

    return run


def _torchscript_backend(model_path: Path, device: str,
                         num_threads: Optional[int]) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise DeployError("TorchScript artifacts need torch: pip install torch") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise DeployError("device 'cuda' asked but torch sees no CUDA GPU; use device='cpu'")
    if num_threads is not None:
        torch.set_num_threads(num_threads)  # process-wide: torch has no per-module thread count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream; prefer ONNX
        module = torch.jit.load(str(model_path), map_location=device).eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(device))
        return out.cpu().numpy()

    return run


class Policy:
    """An exported policy loaded for inference. Build with :meth:`load`.

    Attributes:
        manifest: the artifact's manifest (obs_shape, action_dim, frame_stack, image_size, env, ...).
        obs_shape: ``(C, H, W)`` of one observation.
        action_dim: ``A``.
        format: ``onnx`` or ``torchscript``.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, manifest: dict[str, Any], run: Callable[[np.ndarray], np.ndarray], device: str) -> None:
        self.manifest = manifest
        self.obs_shape: tuple[int, int, int] = tuple(manifest["obs_shape"])  # type: ignore[assignment]
        self.action_dim: int = int(manifest["action_dim"])
        self.format: str = manifest["format"]
        self.device = device
        self._run = run

    @classmethod
    def load(cls, artifact_dir: str | Path, device: str = "cpu", num_threads: Optional[int] = None,
             verify_sha256: bool = True) -> "Policy":
        """Load ``artifact_dir`` (``manifest.json`` + model file).

        Args:
            artifact_dir: directory written by ``covr export``.
            device: ``cpu`` or ``cuda``.
            num_threads: intra-op threads (onnxruntime: this session; torch: the whole process);
                None = the backend's default (all cores).
            verify_sha256: refuse a model file whose sha256 differs from the manifest's.

        Raises:
            DeployError: missing/invalid manifest, missing or corrupted model file, absent backend.
        """
        if device not in ("cpu", "cuda"):
            raise DeployError(f"device {device!r}; allowed: 'cpu', 'cuda'")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise DeployError(f"num_threads {num_threads!r}; allowed: None or an integer >= 1")
        artifact_dir = Path(artifact_dir)
        manifest = read_manifest(artifact_dir)
        model_path = artifact_dir / manifest["model_file"]
        if not model_path.is_file():
            raise DeployError(f"model file {model_path} named by the manifest is missing")
        if verify_sha256:
            digest = sha256_file(model_path)
            if digest != manifest["sha256"]:
                raise DeployError(f"model file {model_path} has sha256 {digest}, the manifest says "
                                  f"{manifest['sha256']}: the file was changed or truncated; export it again")
        if manifest["format"] == "onnx":
            run = _onnx_backend(model_path, manifest, device, num_threads)
        else:
            run = _torchscript_backend(model_path, device, num_threads)
        return cls(manifest, run, device)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action(s).

        Args:
            obs: ``(C, H, W)`` uint8 (one observation) or ``(B, C, H, W)`` uint8 (a batch), with
                ``(C, H, W) == self.obs_shape``.

        Returns:
            ``(A,)`` float32 for one observation, ``(B, A)`` for a batch; values in [-1, 1].

        Raises:
            ObservationError: wrong dtype or shape.
        """
        arr = np.asarray(obs)
        if arr.dtype != np.uint8:
            raise ObservationError(f"observation dtype {arr.dtype}; the policy takes uint8 pixels in 0..255 "
                                   f"of shape {self.obs_shape} or (B, *{self.obs_shape})")
        single = arr.ndim == 3
        if single:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.obs_shape or arr.shape[0] < 1:
            raise ObservationError(f"observation shape {np.shape(obs)}; expected {self.obs_shape} or "
                                   f"(B, *{self.obs_shape}) with B >= 1")
        out = np.asarray(self._run(np.ascontiguousarray(arr)), dtype=np.float32)
        return out[0] if single else out

    def frame_stacker(self, resize: bool = False) -> FrameStacker:
        """A :class:`FrameStacker` matching this policy's ``frame_stack`` and ``image_size``."""
        return FrameStacker(int(self.manifest["frame_stack"]), int(self.manifest["image_size"]), resize=resize)

    def __repr__(self) -> str:
        return (f"Policy(format={self.format!r}, obs_shape={self.obs_shape}, action_dim={self.action_dim}, "
                f"env={self.manifest.get('env')!r}, device={self.device!r})")
