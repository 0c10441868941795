"""covr_deploy: the runtime users ship. Imports no ray / rllib / covr_ray; frame stacking matches training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covr_deploy import DeployError, FrameStacker, ObservationError, Policy, measure_latency
from covr_ray.cli import main
from covr_ray.bench.deploy import preset_policy
from covr_ray.export import export_policy
from support.numerics import assert_close_within, export_verification_atol, policy_error_bound
from support.policies import IMAGE, small_policy

META = {"env": "driving-hw", "image_size": IMAGE, "frame_stack": 3, "action_dim": 2, "env_steps": 42,
        "preset": "driving-hw", "seed": 0}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """One exported small policy per format."""
    root = tmp_path_factory.mktemp("deploy")
    _, policy = small_policy(seed=5)
    out = {}
    atol = export_verification_atol(policy)  # derived float32 bound, not a fixed 1e-4
    for fmt in ("onnx", "torchscript"):
        export_policy(policy, META, root / fmt, fmt, atol=atol)
        out[fmt] = (root / fmt, policy)
    return out


_PROBE = """
import json, sys
import numpy as np
import covr_deploy
policy = covr_deploy.Policy.load(sys.argv[1])
obs = np.load(sys.argv[2])
action = policy.act(obs)
mods = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'covr_ray', 'covr_envs', 'torch', 'gymnasium'))
print(json.dumps({"action": action.tolist(), "modules": mods}))
"""


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_runtime_in_a_fresh_process_imports_no_ray_rllib_or_covr_ray(artifacts, tmp_path: Path, fmt: str) -> None:
    artifact_dir, policy = artifacts[fmt]
    obs = np.random.default_rng(0).integers(0, 256, (9, IMAGE, IMAGE), dtype=np.uint8)
    np.save(tmp_path / "obs.npy", obs)
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(artifact_dir), str(tmp_path / "obs.npy")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    roots = {m.split(".")[0] for m in out["modules"]}
    assert not roots & {"ray", "covr_ray", "covr_envs", "gymnasium"}, out["modules"]
    if fmt == "onnx":
        assert "torch" not in roots  # ONNX artifacts run on numpy + onnxruntime alone
    with torch.no_grad():
        expected = policy(torch.from_numpy(obs)[None])[0].numpy()
    # another runtime (and thread layout) sums in another order: twice the policy's derived float32 bound
    atol = 2.0 * policy_error_bound(policy, torch.from_numpy(obs)[None]).probable[0].numpy()
    assert_close_within(out["action"], expected, atol, f"{fmt} runtime in a fresh process")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_act_single_and_batch_and_input_errors(artifacts, fmt: str) -> None:
    runtime = Policy.load(artifacts[fmt][0], num_threads=1)
    assert runtime.obs_shape == (9, IMAGE, IMAGE) and runtime.action_dim == 2 and runtime.format == fmt
    batch = np.random.default_rng(1).integers(0, 256, (3, 9, IMAGE, IMAGE), dtype=np.uint8)
    out = runtime.act(batch)
    assert out.shape == (3, 2) and out.dtype == np.float32 and np.all(np.abs(out) <= 1.0)
    # batch of 1 vs batch of 3: the kernels may block the sums differently; twice the derived float32 bound
    atol = 2.0 * policy_error_bound(artifacts[fmt][1], torch.from_numpy(batch[1:2])).probable[0].numpy()
    assert_close_within(runtime.act(batch[1]), out[1], atol, "single vs batched action")
    with pytest.raises(ObservationError, match="dtype"):
        runtime.act(batch.astype(np.float32))
    with pytest.raises(ObservationError, match="shape"):
        runtime.act(batch[:, :6])
    with pytest.raises(ObservationError, match="shape"):
        runtime.act(batch[0, 0])


def test_load_refuses_corrupted_or_missing_artifacts(artifacts, tmp_path: Path) -> None:
    import shutil

    src = artifacts["onnx"][0]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    model = bad / "policy.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(DeployError, match="sha256"):
        Policy.load(bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["manifest_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DeployError, match="manifest_version"):
        Policy.load(bad)
    with pytest.raises(DeployError, match="manifest.json is missing"):
        Policy.load(tmp_path)
    with pytest.raises(DeployError, match="device"):
        Policy.load(src, device="tpu")


def test_frame_stacker_rebuilds_the_training_observation() -> None:
    from covr_envs import make_env

    env = make_env("driving-hw", 0, image_size=IMAGE, frame_stack=3, max_episode_steps=6)
    stacker = FrameStacker(frame_stack=3, image_size=IMAGE)
    obs, _ = env.reset(seed=4)
    assert np.array_equal(stacker.reset(env.render()), obs)
    for action in ([0.3, 1.0], [-0.5, 0.0], [0.0, -1.0], [0.2, 0.2]):
        obs, *_ = env.step(np.asarray(action, np.float32))
        assert np.array_equal(stacker.push(env.render()), obs)
    env.close()


def test_frame_stacker_resize_and_errors() -> None:
    from covr_envs.wrappers import resize_frame

    big = np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    stacker = FrameStacker(frame_stack=2, image_size=IMAGE, resize=True)
    obs = stacker.reset(big)
    assert obs.shape == (6, IMAGE, IMAGE) and stacker.obs_shape == (6, IMAGE, IMAGE)
    assert np.array_equal(obs[:3], resize_frame(big, IMAGE).transpose(2, 0, 1))
    strict = FrameStacker(frame_stack=2, image_size=IMAGE)
    with pytest.raises(DeployError, match="reset"):
        strict.push(np.zeros((IMAGE, IMAGE, 3), np.uint8))
    with pytest.raises(ObservationError, match="resize"):
        strict.reset(big)
    with pytest.raises(ObservationError, match="uint8"):
        strict.reset(np.zeros((IMAGE, IMAGE, 3), np.float32))
    with pytest.raises(DeployError, match="frame_stack"):
        FrameStacker(frame_stack=0, image_size=IMAGE)


def test_policy_frame_stacker_feeds_act(artifacts) -> None:
    runtime = Policy.load(artifacts["onnx"][0])
    stacker = runtime.frame_stacker()
    frame = np.random.default_rng(3).integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)
    action = runtime.act(stacker.reset(frame))
    assert action.shape == (2,)


def test_measure_latency_counts_calls() -> None:
    calls = []
    stats = measure_latency(lambda obs: calls.append(obs), np.zeros(1), calls=20, warmup=5)
    assert len(calls) == 25 and stats["calls"] == 20
    assert 0 <= stats["min_ms"] <= stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    with pytest.raises(DeployError):
        measure_latency(lambda obs: None, np.zeros(1), calls=0)


def test_bench_deploy_on_the_paper_size_network(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "deploy", "--json", "--calls", "30", "--warmup", "3", "--quantize", "none"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"p50_ms", "p99_ms", "size_mb", "format", "device"} <= set(out) and out["quantize"] == "none"
    assert out["format"] == "onnx" and out["device"] == "cpu" and out["obs_shape"] == [9, 84, 84]
    assert 0 < out["p50_ms"] <= out["p99_ms"]
    # RAD encoder + actor at 9x84x84, feature 50, hidden 1024, 1 action: 3.09 M float32 weights.
    assert out["parameters"] == 3_094_392 and 12.0 < out["size_mb"] < 13.0
    # ONNX Runtime vs torch on the paper-size network (trunk fan-in 39,200): its derived float32 bound
    assert out["verify_max_abs_diff"] < export_verification_atol(preset_policy("dmc-cartpole-swingup", 0)[0])


def test_bench_deploy_int8_reports_quantized_and_float_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "deploy", "--json", "--calls", "20", "--warmup", "2", "--observations", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["quantize"] == "int8" and out["observations"] == 8 and out["max_action_err"] == 0.05
    assert {"p50_ms", "p99_ms", "size_mb"} <= set(out["float"]) and 0 < out["p50_ms"] <= out["p99_ms"]
    # int8 weights: about a quarter of the float file (3.1 M parameters: 12.4 MB float)
    assert 12.0 < out["float"]["size_mb"] < 13.0 and out["size_mb"] < 4.0
    assert out["size_ratio"] == pytest.approx(out["size_mb"] / out["float"]["size_mb"], abs=2e-3)
    assert 0 <= out["action_err_mean"] <= out["action_err_max"] and out["within_bound"] is (out["action_err_max"] <= 0.05)
    assert out["p50_ratio"] == pytest.approx(out["p50_ms"] / out["float"]["p50_ms"], abs=2e-3)
