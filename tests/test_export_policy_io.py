"""The policy artifact ``policy.pt``: round trip, validation, atomic replacement."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covr_ray.config import load_config
from covr_ray.errors import CheckpointError
from covr_ray.policy_io import POLICY_FORMAT_VERSION, load_policy, policy_meta, read_policy_artifact, save_policy
from support.policies import IMAGE, make_run_dir, small_policy


def _meta(**changes: Any) -> dict[str, Any]:
    meta = {"env": "driving-hw", "image_size": IMAGE, "frame_stack": 3, "action_dim": 2, "env_steps": 500,
            "preset": "smoke", "seed": 7}
    meta.update(changes)
    return meta


def _obs(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 9, IMAGE, IMAGE), dtype=np.uint8))


def test_round_trip_reproduces_actions_and_meta(tmp_path: Path) -> None:
    spec, policy = small_policy()
    path = save_policy(tmp_path / "run" / "policy" / "policy.pt", spec, policy.state_dict(), _meta(round=3))
    loaded, meta = load_policy(path)
    with torch.no_grad():
        expected, got = policy(_obs()), loaded(_obs())
    assert torch.equal(expected, got)
    assert expected.abs().max() > 0.1 and expected.abs().max() <= 1.0  # real, varied, squashed actions
    assert meta["env_steps"] == 500 and meta["seed"] == 7 and meta["round"] == 3
    assert meta["network"] == spec.to_dict()
    # The run directory and the policy directory resolve to the same artifact.
    for where in (tmp_path / "run", tmp_path / "run" / "policy"):
        again, _ = load_policy(where)
        assert torch.equal(again(_obs()), expected)


def test_numpy_state_dict_as_the_learner_returns_it(tmp_path: Path) -> None:
    spec, policy = small_policy(seed=3)
    numpy_state = {k: v.detach().numpy().copy() for k, v in policy.state_dict().items()}
    save_policy(tmp_path / "policy.pt", spec, numpy_state, _meta())
    loaded, _ = load_policy(tmp_path / "policy.pt")
    assert torch.equal(loaded(_obs()), policy(_obs()))


def test_policy_meta_from_config() -> None:
    cfg = load_config("dmc-cartpole-swingup", ["seed=4"])
    meta = policy_meta(cfg, env_steps=1000, action_dim=1)
    assert meta == {"env": "dmc:cartpole-swingup", "image_size": 84, "frame_stack": 3, "action_repeat": 8,
                    "action_dim": 1, "env_steps": 1000, "preset": "dmc-cartpole-swingup", "seed": 4}


@pytest.mark.parametrize("changes, match", [
    ({"env_steps": None}, "env_steps"),
    ({"frame_stack": 2}, "obs_shape"),
    ({"action_dim": 3}, "action_dim"),
    ({"seed": "zero"}, "seed"),
    ({"extra": {"nested": 1}}, "JSON scalar"),
])
def test_save_refuses_bad_meta(tmp_path: Path, changes: dict, match: str) -> None:
    spec, policy = small_policy()
    meta = _meta(**changes)
    if changes.get("env_steps", 0) is None:
        del meta["env_steps"]
    with pytest.raises(CheckpointError, match=match):
        save_policy(tmp_path / "policy.pt", spec, policy.state_dict(), meta)
    assert not (tmp_path / "policy.pt").exists()


def test_save_refuses_weights_of_another_network_and_nan(tmp_path: Path) -> None:
    spec, policy = small_policy()
    _, bigger = small_policy(action_dim=3)
    with pytest.raises(CheckpointError, match="do not fit"):
        save_policy(tmp_path / "policy.pt", spec, bigger.state_dict(), _meta())
    broken = {k: v.clone() for k, v in policy.state_dict().items()}
    broken["actor.policy.0.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        save_policy(tmp_path / "policy.pt", spec, broken, _meta())


def test_load_refuses_missing_truncated_foreign_and_future_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no policy artifact.*run directory with policy/policy.pt"):
        load_policy(tmp_path / "nowhere")
    spec, policy = small_policy()
    path = save_policy(tmp_path / "policy.pt", spec, policy.state_dict(), _meta())
    data = path.read_bytes()
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "policy.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_policy(tmp_path / "truncated")
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    (tmp_path / "foreign.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not a COVR policy"):
        load_policy(tmp_path / "foreign.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = POLICY_FORMAT_VERSION + 1
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    (tmp_path / "future.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="format_version"):
        read_policy_artifact(tmp_path / "future.pt")


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    spec, first = small_policy(seed=0)
    _, second = small_policy(seed=1)
    path = tmp_path / "policy" / "policy.pt"
    save_policy(path, spec, first.state_dict(), _meta(env_steps=100))
    save_policy(path, spec, second.state_dict(), _meta(env_steps=200))
    loaded, meta = load_policy(path)
    assert meta["env_steps"] == 200
    assert torch.equal(loaded(_obs()), second(_obs()))
    assert sorted(p.name for p in path.parent.iterdir()) == ["policy.pt"]


def test_make_run_dir_helper_builds_a_loadable_run(tmp_path: Path) -> None:
    run_dir, cfg, policy = make_run_dir(tmp_path)
    loaded, meta = load_policy(run_dir)
    assert (run_dir / "config.yaml").is_file()
    assert meta["env"] == cfg.env.name == "driving-hw" and meta["env_steps"] == 123
    assert torch.equal(loaded(_obs()), policy(_obs()))
