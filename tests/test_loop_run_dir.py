"""Run directory: absolute paths, refusal to clobber a run, LATEST pointing at complete checkpoints only."""

from __future__ import annotations

import pytest

from covr_ray.config import load_config
from covr_ray.errors import CheckpointError
from covr_ray.loop.run_dir import RunDir, read_loop_state, rng_state, set_rng_state, write_loop_state


def test_relative_run_dir_becomes_absolute_and_is_not_clobbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("smoke")
    run = RunDir.create("runs/a", cfg)
    assert run.root.is_absolute() and run.root == tmp_path / "runs" / "a"
    with pytest.raises(CheckpointError, match="--resume"):
        RunDir.create("runs/a", cfg)
    again, cfg2 = RunDir.open("runs/a")
    assert again.root == run.root and cfg2 == cfg


def test_latest_names_only_complete_checkpoints_and_old_ones_are_pruned(tmp_path):
    run = RunDir.create(tmp_path / "r", load_config("smoke"))
    assert run.latest_checkpoint() is None
    for steps in (100, 200, 300):
        path = run.checkpoints / f"ckpt-{steps:010d}"
        path.mkdir()
        write_loop_state(path, {"env_steps": steps})
        run.commit_checkpoint(path, keep=2)
    assert run.latest_checkpoint().name == "ckpt-0000000300"
    assert sorted(p.name for p in run.checkpoints.glob("ckpt-*")) == ["ckpt-0000000200", "ckpt-0000000300"]
    assert read_loop_state(run.latest_checkpoint())["env_steps"] == 300
    (run.latest_checkpoint() / "loop_state.json").unlink()  # a checkpoint damaged after the fact
    with pytest.raises(CheckpointError, match="incomplete"):
        run.latest_checkpoint()


def test_rng_state_round_trip():
    import random

    import numpy as np
    import torch

    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
