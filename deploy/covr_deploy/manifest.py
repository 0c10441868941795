"""``manifest.json`` of an exported policy: the contract between ``covr export`` and this runtime.

An artifact directory holds the model file and ``manifest.json``::

    {"manifest_version": 1, "format": "onnx" | "torchscript", "model_file": "policy.onnx",
     "sha256": "<hex digest of the model file>", "obs_shape": [9, 84, 84], "obs_dtype": "uint8",
     "action_dim": 6, "action_dtype": "float32", "action_low": -1.0, "action_high": 1.0,
     "input_name": "obs", "output_name": "action", "frame_stack": 3, "image_size": 84,
     "env": "dmc:cheetah-run", "env_steps": 100000, ...}

The model maps ``obs: (B, C, H, W) uint8`` (``C = 3 * frame_stack``: RGB frames channels-first, oldest
first) to ``action: (B, A) float32`` in [-1, 1]. Extra keys (network spec, verification figures, versions)
are informational.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from covr_deploy.errors import DeployError

MANIFEST_FILE = "manifest.json"
"""Name of the manifest inside an artifact directory."""
MANIFEST_VERSION = 1
"""Version of the manifest layout this runtime reads."""
FORMATS = ("onnx", "torchscript")
"""Model formats: ONNX (run with onnxruntime) and TorchScript (run with torch)."""
MODEL_FILES = {"onnx": "policy.onnx", "torchscript": "policy.torchscript.pt"}
"""Model file name per format."""
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "manifest_version": int, "format": str, "model_file": str, "sha256": str, "obs_shape": list,
    "obs_dtype": str, "action_dim": int, "action_dtype": str, "input_name": str, "output_name": str,
    "frame_stack": int, "image_size": int,
}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_manifest(data: Any, where: str = "manifest") -> dict[str, Any]:
    """Check keys, types and consistency; return the manifest as a dict.

    Raises:
        DeployError: naming the offending key and what is allowed.
    """
    if not isinstance(data, dict):
        raise DeployError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key, tp in REQUIRED_KEYS.items():
        if key not in data:
            raise DeployError(f"{where}: missing key {key!r}; required: {', '.join(REQUIRED_KEYS)}")
        if isinstance(data[key], bool) or not isinstance(data[key], tp):
            raise DeployError(f"{where}: {key!r} = {data[key]!r} has the wrong type")
    if data["manifest_version"] != MANIFEST_VERSION:
        raise DeployError(f"{where}: manifest_version {data['manifest_version']} is not supported; this "
                          f"runtime reads version {MANIFEST_VERSION}")
    if data["format"] not in FORMATS:
        raise DeployError(f"{where}: format {data['format']!r}; allowed: {', '.join(FORMATS)}")
    shape = data["obs_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise DeployError(f"{where}: obs_shape {shape!r} must be [C, H, W] positive integers")
    expected = [3 * data["frame_stack"], data["image_size"], data["image_size"]]
    if list(shape) != expected:
        raise DeployError(f"{where}: obs_shape {shape} != [3 * frame_stack, image_size, image_size] = {expected}")
    if data["obs_dtype"] != "uint8" or data["action_dtype"] != "float32":
        raise DeployError(f"{where}: dtypes obs {data['obs_dtype']!r} / action {data['action_dtype']!r}; this "
                          "runtime supports uint8 observations and float32 actions")
    if data["action_dim"] < 1:
        raise DeployError(f"{where}: action_dim {data['action_dim']} must be >= 1")
    if Path(data["model_file"]).name != data["model_file"]:
        raise DeployError(f"{where}: model_file {data['model_file']!r} must be a plain file name inside the "
                          "artifact directory")
    if len(data["sha256"]) != 64:
        raise DeployError(f"{where}: sha256 {data['sha256']!r} is not a hex sha256 digest")
    return dict(data)


def read_manifest(artifact_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``<artifact_dir>/manifest.json``.

    Raises:
        DeployError: no such file, not JSON, or an invalid manifest.
    """
    path = Path(artifact_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DeployError(f"{artifact_dir} is not a policy artifact: {MANIFEST_FILE} is missing "
                          "(make one with `covr export RUN_DIR --format onnx`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path} is not valid JSON: {exc}") from exc
    return validate_manifest(data, str(path))
