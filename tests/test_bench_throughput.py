"""`covr bench throughput --json` runs both paths (covr train's CovrRun and the single-process PlainLoop) at a
tiny size and reports its figures; both paths did the same agent steps and updates. No timing assertions."""

from __future__ import annotations

import json

import pytest

from covr_ray.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = ["env.image_size=32", "sac.batch_size=8", "sac.hidden_dim=16", "sac.feature_dim=8", "sac.num_filters=4",
        "sac.learning_starts=8", "sac.buffer_capacity=200", "env.max_episode_steps=12"]


def test_bench_throughput_reports_both_paths_with_equal_steps_and_updates(ray_session, capsys):
    args = ["bench", "throughput", "--preset", "smoke", "--steps", "8", "--repeats", "2", "--skip-iterations", "1",
            "--num-env-runners", "1", "--json"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("distributed_over_single_process", "agent_steps_per_s_distributed",
                "agent_steps_per_s_single_process", "per_env_runners", "preset", "steps_per_block", "sizes",
                "load_avg_1m_before", "load_avg_1m_after", "num_env_runners", "overrides"):
        assert key in out, key
    assert out["preset"] == "smoke" and out["num_env_runners"] == 1 and out["steps_per_block"] == 8
    assert out["sizes"]["batch_size"] == 8 and out["sizes"]["hidden_dim"] == 16
    assert out["sizes"]["updates_per_step"] == 1.0
    assert set(out["per_env_runners"]) == {"1"}
    one = out["per_env_runners"]["1"]
    assert one["agent_steps"] == {"distributed": 16, "single_process": 16}  # 2 blocks of 8
    assert one["updates"]["distributed"] == one["updates"]["single_process"] == 16  # 1 update per agent step
    assert out["agent_steps"] == one["agent_steps"] and out["updates"] == one["updates"]
    assert one["distributed_over_single_process"] > 0
    assert out["distributed_over_single_process"] == one["distributed_over_single_process"]


def test_bench_throughput_refuses_bad_runner_counts(capsys):
    assert main(["bench", "throughput", "--num-env-runners", "0,2", "--json"]) == 2
    assert "--num-env-runners" in capsys.readouterr().err
