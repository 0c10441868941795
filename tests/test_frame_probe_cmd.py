"""`covr probe RUN_DIR`: per kept set under rounds/ and on the policy's own rollouts, the frame probe against
the best constants, every row held out once; an unreadable kept set is listed with its error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covr_ray import columns as C
from covr_ray.cli import main
from covr_ray.df.shards import build_table, write_shard_set
from covr_ray.frames import encode_frame
from covr_ray.report.frame_probe import format_probe, probe_run
from covr_ray.run_dir import RunDir
from support.policies import make_run_dir

EPISODES, STEPS = 10, 12


def _kept(path: Path, readable: bool, seed: int) -> None:
    """A kept set of EPISODES x STEPS rows; frames show a bright square at a random column; the action follows
    the column (``readable``) or ignores the frame."""
    rng = np.random.default_rng(seed)
    n = EPISODES * STEPS
    pos = rng.uniform(0, 1, n)
    frames = []
    for p in pos:
        f = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)
        f[18:30, int(4 + 36 * p):int(12 + 36 * p)] = 230
        frames.append(f)
    actions = np.stack([2 * pos - 1, 1 - pos], 1) if readable else rng.uniform(-1, 1, (n, 2))
    rows = {C.EPISODE_ID: [f"ep{i // STEPS}" for i in range(n)], C.STEP_INDEX: [i % STEPS for i in range(n)],
            C.FRAME_PNG: [encode_frame(f) for f in frames], C.RL_ACTION: actions.astype(np.float32),
            C.RETURN_TO_GO: np.zeros(n), C.REWARD: np.zeros(n), C.Q_VALUE: np.full(n, np.nan),
            C.ENTROPY: np.zeros(n), C.SAMPLE_WEIGHT: np.ones(n)}
    write_shard_set(path, [build_table(rows, "kept", 2)], "kept", 2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _cfg, _ = make_run_dir(tmp_path_factory.mktemp("probe"))
    run = RunDir(root)
    _kept(run.round_dir(0, 300), readable=True, seed=0)
    _kept(run.round_dir(1, 600), readable=False, seed=1)
    run.round_dir(2, 900).mkdir(parents=True)  # a round whose set was never completed: no manifest
    (run.rounds / ".round-003-step1200.tmp").mkdir()  # not a round directory
    return root


def test_probe_reads_a_readable_kept_set_and_not_an_unreadable_one(run_dir: Path) -> None:
    report = probe_run(run_dir)
    kept = report["kept_sets"]
    assert [(k["round"], k["env_steps"]) for k in kept] == [(1, 300), (2, 600), (3, 900)]
    readable, noise, broken = kept
    assert readable["rows"] == noise["rows"] == EPISODES * STEPS and readable["groups"] == EPISODES
    assert readable["folds"] == 5
    assert readable["probe_over_const"] < 0.5 and readable["const_err"] > 0.25
    assert noise["probe_over_const"] > 0.85
    assert "error" in broken and "manifest" in broken["error"]
    assert report["policy"] is None
    text = format_probe(report)
    assert "round 1 (step 300)" in text and "round 3 (step 900)" in text


def test_probe_cli_with_policy_rollouts(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(run_dir), "--episodes", "3", "--seed", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    policy = report["policy"]
    assert policy["episodes"] == 3 and policy["seed"] == 5 and policy["env_steps"] == 123
    assert policy["groups"] == 3 and 3 <= policy["rows"] <= 15  # 5-step episodes of the test run
    assert all(np.isfinite(policy[k]) for k in ("probe_err", "const_err", "codec_err", "return_mean"))
    own = policy["observation"]  # the policy's own input: the same rows and folds
    assert own["rows"] == policy["rows"] and own["const_err"] == policy["const_err"] and np.isfinite(own["probe_err"])
    assert own["shape"][0] % 3 == 0 and len(own["shape"]) == 3  # stacked RGB frames, channels first
    assert main(["probe", str(run_dir), "--episodes", "2"]) == 0
    text = capsys.readouterr().out
    assert "policy, 2 episodes" in text and "its input" in text


def test_probe_errors_are_typed_before_any_work(run_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(tmp_path / "nope")]) == 2  # no run directory
    assert "config.yaml" in capsys.readouterr().err
    assert main(["probe", str(run_dir), "--episodes", "-1"]) == 2  # names the bad value
    assert "episodes" in capsys.readouterr().err
    bare = tmp_path / "bare"  # a run directory without its policy yet
    bare.mkdir()
    (bare / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["probe", str(bare), "--episodes", "2"]) == 2
    assert "policy.pt does not exist" in capsys.readouterr().err
