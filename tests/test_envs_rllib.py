"""COVR envs inside RLlib env runners (Ray actors): seeds, and a killed runner replaced mid-run."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from covr_envs.rllib import ENV_ID, create_env, env_config_dict, env_seed, register_covr_env
from covr_ray.config import EnvSection, load_config
from covr_ray.errors import ConfigError
from support.ray_local import local_ray


def test_creator_builds_env_with_distinct_seeds_per_runner_and_vector_index() -> None:
    from ray.rllib.env.env_context import EnvContext

    cfg = env_config_dict(EnvSection(name="driving-hw", image_size=32, kwargs={"vehicles": 4}), seed=11)
    envs = [create_env(EnvContext(cfg, worker_index=w)) for w in (1, 1, 2)]
    seeds = [e.seed_value for e in envs]
    assert len(set(seeds)) == 3
    assert envs[0].observation_space.shape == (9, 32, 32)
    first = [e.reset()[0] for e in envs]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])
    assert env_seed(11, 1, 0) != env_seed(11, 0, 1) and 0 <= env_seed(2**32 - 1, 5, 3) < 2**32
    with pytest.raises(ConfigError, match="env_config.seed"):
        create_env({"name": "driving-hw"})
    with pytest.raises(ConfigError, match="env.image_size"):
        create_env(dict(cfg, image_size=4))


def test_killed_env_runner_is_replaced_and_sampling_continues() -> None:
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    from covr_envs.rllib import configure_env_runners

    def _sample(runner: Any) -> tuple[int, int]:  # defined here: shipped to the runner by value
        episodes = runner.sample(num_timesteps=6, random_actions=True)
        return os.getpid(), sum(len(e) for e in episodes)

    cfg = load_config("smoke", overrides=["env.image_size=32", "env.kwargs={vehicles: 4}", "ray.num_env_runners=1",
                                          "ray.num_envs_per_env_runner=2", "ray.num_cpus_per_env_runner=0.5"])
    with local_ray(runtime_env={"env_vars": {"MUJOCO_GL": "egl"}}):
        group = None
        try:
            algo_config = configure_env_runners(AlgorithmConfig(), cfg, restart_delay_s=0.5)
            assert algo_config.env == ENV_ID == register_covr_env()
            assert algo_config.num_envs_per_env_runner == 2 and algo_config.restart_failed_env_runners
            group = EnvRunnerGroup(config=algo_config, local_env_runner=False)
            before = group.foreach_env_runner(_sample, local_env_runner=False, timeout_seconds=120)
            assert len(before) == 1 and before[0][1] >= 6
            old_pid = before[0][0]

            os.kill(old_pid, signal.SIGKILL)  # the env runner's process crashes mid-run
            deadline = time.monotonic() + 90
            after: list[tuple[int, int]] = []
            while time.monotonic() < deadline:
                after = group.foreach_env_runner(_sample, local_env_runner=False, timeout_seconds=60)
                if after:
                    break
                group.probe_unhealthy_env_runners(timeout_seconds=10)  # what Algorithm.restore_env_runners calls
                time.sleep(0.5)
            assert after, "the killed env runner was not replaced within 90 s"
            new_pid, steps = after[0]
            assert new_pid != old_pid and steps >= 6, "a new runner process samples the COVR env again"
            assert group.num_remote_worker_restarts() >= 1
        finally:
            if group is not None:
                group.stop()


def test_every_env_path_gets_the_same_runners_and_fault_tolerance() -> None:
    """The run's env (with or without a run context) and an explicit env (tests, benches) get the ray
    section the same way: one creator registered for the run's env, sub-environments restarted, the delay."""
    from covr_envs.rllib import RUN_CONTEXT_KEY
    from covr_ray.rl.algo import build_algorithm_config

    cfg = load_config("smoke", overrides=["ray.num_env_runners=2", "ray.num_envs_per_env_runner=3"])
    context = {"covr": cfg.to_dict(), "run_id": "t"}
    configs = [build_algorithm_config(cfg), build_algorithm_config(cfg, run_context=context),
               build_algorithm_config(cfg, env="some_other_env", env_config={})]
    for config in configs:
        assert (config.num_env_runners, config.num_envs_per_env_runner) == (2, 3)
        assert config.restart_failed_env_runners and config.restart_failed_sub_environments
        assert config.delay_between_env_runner_restarts_s == 60.0
    assert configs[0].env == configs[1].env == ENV_ID
    assert RUN_CONTEXT_KEY not in configs[0].env_config and configs[1].env_config[RUN_CONTEXT_KEY] == context
    with pytest.raises(ConfigError, match="run_context"):
        build_algorithm_config(cfg, env="some_other_env", run_context=context)
