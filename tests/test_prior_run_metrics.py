"""The run's prior figures: the service's add up over every replica (only replica 0 was polled before), and the
env runners' prior-client counters reach the metrics (they were computed but never reported)."""

from __future__ import annotations

import math

import pytest

from covr_ray.prior.metrics import PriorStats, aggregate_replicas


def _replica(answered: int, failures: int, latency_ms: float, version: int, batches: list[int]) -> dict:
    stats = PriorStats(ray_metrics=False)
    for size in batches:
        stats.batch(size)
    for i in range(answered):
        stats.answer(latency_ms, parsed=i >= failures)
    stats.adapter_version = version
    return {**stats.as_dict(), "prior/queue_length": 2, "prior/engine_start_s": 3.0}


def test_counts_add_latencies_take_the_worst_and_version_the_oldest():
    a = _replica(10, 1, 50.0, version=3, batches=[4, 6])
    b = _replica(30, 6, 80.0, version=2, batches=[10, 10, 10])
    out = aggregate_replicas([a, b])
    assert out["prior/replicas"] == 2
    assert out["prior/answered_total"] == 40 and out["prior/queries_total"] == 40
    assert out["prior/parse_failures_total"] == 7 and out["prior/parse_failure_rate"] == pytest.approx(7 / 40)
    assert out["prior/latency_p95_ms"] == 80.0 and out["prior/batch_size_max"] == 10
    assert out["prior/batch_size_mean"] == pytest.approx((2 * 5 + 3 * 10) / 5)
    assert out["prior/adapter_version"] == 2  # a replica that refused the last swap shows
    assert out["prior/queue_length"] == 4
    one = aggregate_replicas([a])  # one replica: its own figures (nan, no swap yet, compared apart)
    assert math.isnan(one.pop("prior/last_swap_s")) and math.isnan(a["prior/last_swap_s"])
    assert one == {**{k: float(v) for k, v in a.items() if k != "prior/last_swap_s"}, "prior/replicas": 1.0}
    assert aggregate_replicas([]) == {"prior/replicas": 0.0}
    assert math.isnan(aggregate_replicas([{"prior/last_swap_s": float("nan")}])["prior/last_swap_s"])


def test_env_runner_prior_counters_are_reported_as_deltas_of_every_wrapper():
    """Through gymnasium's real vector env and vector wrapper (which forward no attributes): every PriorWrapper
    is found, and each sample reports only what was counted since the last one (RLlib sums them for life)."""
    from types import SimpleNamespace

    import gymnasium as gym
    import numpy as np
    from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

    from covr_ray.prior.client import PriorWrapper
    from covr_ray.prior.client_stats import PriorClientStatsCallback, prior_wrappers

    class Frames(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
        action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

        def reset(self, *, seed=None, options=None):
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    vec = gym.wrappers.vector.DictInfoToList(
        gym.vector.SyncVectorEnv([lambda: PriorWrapper(Frames(), action_dim=1, client=None)] * 3))
    assert len(list(prior_wrappers(vec))) == 3
    runner, logger, callback = SimpleNamespace(env=vec), MetricsLogger(), PriorClientStatsCallback()
    vec.reset(seed=0)
    for _ in range(4):
        vec.step(np.zeros((3, 1), np.float32))
    callback.on_sample_end(env_runner=runner, metrics_logger=logger, samples=[])
    for _ in range(2):
        vec.step(np.zeros((3, 1), np.float32))
    callback.on_sample_end(env_runner=runner, metrics_logger=logger, samples=[])
    assert logger.peek("prior_client/steps") == 18  # 3 envs x 6 steps, each step reported once
    assert logger.peek("prior_client/with_prior") == 0
