"""Runtime of an exported COVR policy: no Ray, no RLlib, no covr_ray.

    from covr_deploy import Policy
    policy = Policy.load("runs/driving-hw-0/export")    # written by `covr export RUN_DIR --format onnx`
    stacker = policy.frame_stacker()
    obs = stacker.reset(first_rgb_frame)                # (84, 84, 3) uint8 -> (9, 84, 84) uint8
    action = policy.act(obs)                            # (A,) float32 in [-1, 1]

ONNX artifacts need only numpy + onnxruntime; TorchScript artifacts need torch.
"""

from covr_deploy.bench import measure_latency
from covr_deploy.errors import DeployError, ObservationError
from covr_deploy.framestack import FrameStacker
from covr_deploy.manifest import FORMATS, MANIFEST_FILE, MANIFEST_VERSION, MODEL_FILES, read_manifest
from covr_deploy.runtime import Policy

__all__ = ["DeployError", "FORMATS", "FrameStacker", "MANIFEST_FILE", "MANIFEST_VERSION", "MODEL_FILES",
           "ObservationError", "Policy", "measure_latency", "read_manifest"]
