"""Export to ONNX and TorchScript: the artifact reproduces the torch policy; failures leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covr_deploy import Policy
from covr_deploy.manifest import MODEL_FILES, sha256_file
from covr_ray.cli import main
from covr_ray.errors import ExportError
from covr_ray.export import export_policy, export_run, verify_artifact
from covr_ray.rl.networks import PixelPolicy
from support.numerics import assert_close_within, export_verification_atol, policy_error_bound
from support.policies import IMAGE, make_run_dir, small_policy


class BranchyPolicy(PixelPolicy):
    """Eager forward flips the action when any pixel is lit: tracing (on an all-black example) records one
    branch only, so the exported model cannot reproduce it (a real export failure, caught by verification)."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        action = super().forward(obs)
        if bool(obs.max() > 0):
            return -action
        return action


def _obs(n: int = 5, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 9, IMAGE, IMAGE), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_run_reproduces_the_torch_policy(tmp_path: Path, fmt: str) -> None:
    run_dir, cfg, policy = make_run_dir(tmp_path)
    # The artifact (ONNX Runtime's kernels, or TorchScript in another thread layout) sums in another order
    # than eager torch: both lie within the policy's derived float32 bound of the exact actions.
    verify_atol = export_verification_atol(policy)
    assert verify_atol < 1e-2  # still far below the O(0.1) action errors of a wrong export
    manifest, out_dir = export_run(run_dir, fmt, atol=verify_atol)
    assert out_dir == run_dir / "export"
    model = out_dir / MODEL_FILES[fmt]
    on_disk = json.loads((out_dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["sha256"] == sha256_file(model) and manifest["size_bytes"] == model.stat().st_size
    assert manifest["obs_shape"] == [9, IMAGE, IMAGE] and manifest["obs_dtype"] == "uint8"
    assert manifest["action_dim"] == 2 and manifest["env"] == "driving-hw" and manifest["env_steps"] == 123
    assert manifest["format"] == fmt and manifest["frame_stack"] == 3 and manifest["image_size"] == IMAGE
    assert manifest["verification"]["max_abs_diff"] < verify_atol == manifest["verification"]["atol"]
    runtime = Policy.load(out_dir)
    obs = _obs()
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)).numpy()
    atol = 2.0 * policy_error_bound(policy, torch.from_numpy(obs)).probable.numpy()  # per action element
    batched = runtime.act(obs)
    assert batched.dtype == np.float32 and batched.shape == (5, 2)
    assert_close_within(batched, expected, atol, "batched actions")
    assert_close_within(runtime.act(obs[0]), expected[0], atol[0], "single action")
    assert np.abs(expected).max() > 0.1  # the comparison is over non-trivial actions
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["manifest.json", model.name])
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # staging removed


def test_verification_catches_a_model_that_differs(tmp_path: Path) -> None:
    run_dir, _, _ = make_run_dir(tmp_path)
    _, out_dir = export_run(run_dir, "onnx", tmp_path / "artifact")
    _, other = small_policy(seed=9)
    with pytest.raises(ExportError, match="differs from the torch policy"):  # even at the derived tolerance
        verify_artifact(other, out_dir, atol=export_verification_atol(other))


def test_failed_verification_leaves_the_previous_artifact(tmp_path: Path) -> None:
    fmt = "onnx"  # verification is the same code for both formats
    spec, good = small_policy()
    meta = {"env": "driving-hw", "image_size": IMAGE, "frame_stack": 3, "action_dim": 2, "env_steps": 1,
            "preset": "driving-hw", "seed": 0}
    out_dir = tmp_path / "export"
    atol = export_verification_atol(good)  # derived float32 bound; the branch flips actions far beyond it
    first = export_policy(good, meta, out_dir, fmt, atol=atol)
    branchy = BranchyPolicy(good.encoder, good.actor)
    with pytest.raises(ExportError, match="differs"), pytest.warns(torch.jit.TracerWarning):
        export_policy(branchy, {**meta, "env_steps": 2}, out_dir, fmt, atol=atol)
    assert json.loads((out_dir / "manifest.json").read_text())["sha256"] == first["sha256"]
    assert sha256_file(out_dir / MODEL_FILES[fmt]) == first["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_unknown_format_is_a_typed_error(tmp_path: Path) -> None:
    run_dir, _, _ = make_run_dir(tmp_path)
    with pytest.raises(ExportError, match="tflite"):
        export_run(run_dir, "tflite")


def test_cli_export_json_and_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, policy = make_run_dir(tmp_path)
    out = tmp_path / "elsewhere"
    atol = str(export_verification_atol(policy))  # derived float32 bound instead of the CLI's fixed default
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out), "--json", "--atol", atol]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["artifact_dir"] == str(out) and printed["format"] == "torchscript"
    assert (out / MODEL_FILES["torchscript"]).is_file()
    assert main(["export", str(run_dir), "--format", "onnx", "--atol", atol]) == 0
    assert "verified: max abs diff" in capsys.readouterr().out
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and Policy.load(run_dir / "export").format == "onnx"
