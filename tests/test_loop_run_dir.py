"""Run directory: absolute paths, refusal to clobber a run, LATEST pointing at complete checkpoints only."""

from __future__ import annotations

import pytest

from covr_ray.config import load_config
from covr_ray.errors import CheckpointError
from covr_ray.run_dir import RunDir, read_loop_state, rng_state, set_rng_state, write_loop_state


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


def test_run_id_is_made_once_and_survives_reopening(tmp_path):
    """The id names the run's Ray actors: a resumed run must get the same one (it was made anew at every
    start-up, so a resumed run's env runners looked for a prior service that no longer existed)."""
    run = RunDir.create(tmp_path / "my run:1", load_config("smoke"))
    run_id = run.run_id
    assert run_id.startswith("my-run-1-") and len(run_id) == len("my-run-1-") + 6
    assert RunDir.open(run.root)[0].run_id == run_id == run.run_id
    other = RunDir.create(tmp_path / "my run:2", load_config("smoke"))
    assert other.run_id != run_id  # two runs on one cluster never collide
    (run.root / "run_id").write_text("bad id with spaces\n")
    with pytest.raises(CheckpointError, match="not a run id"):
        RunDir.open(run.root)[0].run_id


def test_a_run_dir_from_before_persisted_ids_takes_its_checkpoints_id(tmp_path):
    run = RunDir.create(tmp_path / "old", load_config("smoke"))
    (run.root / "run_id").unlink()
    path = run.checkpoints / "ckpt-0000000100"
    path.mkdir()
    write_loop_state(path, {"env_steps": 100, "run_id": "old-abc123"})
    run.commit_checkpoint(path)
    assert run.run_id == "old-abc123" and (run.root / "run_id").read_text().strip() == "old-abc123"


def test_driver_lock_refuses_a_second_driver_and_dies_with_a_killed_one(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = RunDir.create(tmp_path / "r", load_config("smoke"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from covr_ray.run_dir import RunDir; RunDir(__import__('pathlib').Path(sys.argv[1]))"
        ".lock(); print('locked', flush=True); time.sleep(600)"), str(run.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=f"pid {holder.pid}"):
            RunDir.open(run.root)[0].lock()
        holder.send_signal(signal.SIGKILL)  # a crash, not a clean stop
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        mine = RunDir.open(run.root)[0]
        while True:
            try:
                mine.lock()
                break
            except CheckpointError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        mine.lock()  # idempotent for its holder
        mine.unlock()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_layout_is_the_documented_one(tmp_path):
    """Every path of a run directory comes from RunDir; these are the names the module docstring documents
    (and `covr eval`, `covr export`, `covr report`, the metrics sink and older run directories rely on)."""
    root = tmp_path / "r"
    run = RunDir(str(root))  # a str root works too
    assert run.root == root
    assert {name: getattr(run, name).relative_to(root).as_posix() for name in (
        "config_path", "lock_path", "run_id_path", "checkpoints", "adapters", "df", "rounds", "policy", "eval",
        "export", "metrics_csv", "tensorboard", "wandb")} == {
        "config_path": "config.yaml", "lock_path": ".lock", "run_id_path": "run_id", "checkpoints": "checkpoints",
        "adapters": "adapters", "df": "df", "rounds": "rounds", "policy": "policy/policy.pt", "eval": "eval",
        "export": "export", "metrics_csv": "metrics.csv", "tensorboard": "tb", "wandb": "wandb"}
    assert run.checkpoint(1500) == root / "checkpoints" / "ckpt-0000001500"
    assert run.round_dir(3, 1500) == root / "rounds" / "round-003-step1500"
    assert run.eval_result(1500) == root / "eval" / "eval-1500.json"
    assert run.eval_video(1500, "gif") == root / "eval" / "video-1500.gif"


def test_eval_results_lists_only_result_files_by_steps(tmp_path):
    run = RunDir(tmp_path)
    assert run.eval_results() == []  # no eval/ yet
    for steps in (1000, 200, 30):
        run.eval_result(steps).parent.mkdir(exist_ok=True)
        run.eval_result(steps).write_text("{}")
    run.eval_video(1000, "mp4").write_bytes(b"")
    (run.eval / "eval-x.json").write_text("{}")
    assert run.eval_results() == [(s, run.eval_result(s)) for s in (30, 200, 1000)]


def test_read_config_errors_are_typed_and_name_the_run(tmp_path):
    cfg = load_config("smoke")
    run = RunDir.create(tmp_path / "r", cfg)
    assert run.read_config() == cfg
    with pytest.raises(CheckpointError, match="is not a run directory: config.yaml is missing"):
        RunDir.open(tmp_path / "nothing")
    run.config_path.write_text("a: [1\n")
    with pytest.raises(CheckpointError, match="config.yaml is not valid YAML"):
        run.read_config()
    run.config_path.write_text("- 1\n")
    with pytest.raises(CheckpointError, match="does not hold a config mapping"):
        RunDir.open(run.root)
