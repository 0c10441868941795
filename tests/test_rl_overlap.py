"""``ray.overlap_sampling``: the remote env runners sample the next fragment while the learner updates.

On the tiny pixel env (support/dot_env.py, 20 ms a step so a fragment outlasts the updates), one remote env
runner, through the real RLlib algorithm: env steps run during learner updates with the overlap and never
without it, while both modes count a fragment an iteration (the overlap stores and trains on each one
iteration later), and the runner ends each iteration with the learner's weights; ``train()`` returns with
the runners idle and the fragment sampled during the updates counted and kept for the next iteration's
replay, a checkpoint holds every step it counts, and a run goes on from it, saved or restored; a runner
SIGKILLed while it samples is replaced and sampling goes on. (The warm-up that follows the count on a remote
runner: tests/test_rl_algo.py.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from covr_ray.config import load_config
from support.dot_env import register_prior_dot_env
from support.ray_local import local_ray

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FRAGMENT = 8


TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dot_env() -> Iterator[str]:
    """The tiny pixel env, registered with a local Ray whose workers import it from tests/ (the remote env
    runners unpickle its creator by reference)."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    with local_ray(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": path}}):
        yield register_prior_dot_env("covr_test_overlap_dot")


def _build(env: str, overlap: bool, step_log: Path, **env_config: Any) -> Any:
    from covr_ray.rl.algo import build_algorithm_config

    cfg = load_config("smoke", overrides=[
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16", "sac.learning_starts=16",
        f"sac.rollout_fragment_length={FRAGMENT}", "sac.updates_per_step=1", "sac.buffer_capacity=500",
        "ray.num_env_runners=1", "ray.num_cpus_per_env_runner=1", "env.image_size=24", "prior.enabled=false",
        f"ray.overlap_sampling={str(overlap).lower()}"])
    config = build_algorithm_config(cfg, env=env, env_config={"size": 24, "step_sleep_s": 0.02,
                                                              "step_log": str(step_log), **env_config})
    config.fault_tolerance(delay_between_env_runner_restarts_s=0.5)
    return config.build_algo()


def _record_updates(algo: Any) -> list[tuple[float, float]]:
    """Wall-clock spans of the learner group's updates (each call goes through to the real update)."""
    spans: list[tuple[float, float]] = []
    update = algo.learner_group.update

    def recorded(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return update(*args, **kwargs)
        finally:
            spans.append((started, time.time()))

    algo.learner_group.update = recorded
    return spans


def _steps(log: Path) -> list[tuple[float, float]]:
    return [tuple(map(float, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def _runner_weights(algo: Any) -> dict[str, Any]:
    [state] = algo.env_runner_group.foreach_env_runner(
        lambda w: {k: v.detach().cpu().numpy() for k, v in w.module.state_dict().items()},
        local_env_runner=False, timeout_seconds=60)
    return state


def _learner_weights(algo: Any) -> dict[str, Any]:
    from covr_ray.rl.algo import MODULE_ID

    [res] = algo.learner_group.foreach_learner(
        lambda learner: {k: v.detach().cpu().numpy() for k, v in learner.module[MODULE_ID].state_dict().items()})
    return res.get()


def _pending_steps(algo: Any) -> int:
    from covr_ray.rl.training_step import pending_episodes

    return sum(len(e) for e in pending_episodes(algo))


def _lifetime_steps(algo: Any) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    return int(algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


def test_env_steps_run_during_updates_with_the_overlap_only_and_both_modes_count_alike(dot_env: str,
                                                                                    tmp_path: Path) -> None:
    from covr_ray.rl.algo import num_updates

    seen: dict[bool, dict[str, Any]] = {}
    for overlap in (True, False):
        log = tmp_path / f"steps-{overlap}.txt"
        algo = _build(dot_env, overlap, log)
        try:
            spans = _record_updates(algo)
            for _ in range(6):
                algo.train()
            steps = _steps(log)
            during = sum(any(s < u_end and e > u_start for s, e in steps) for u_start, u_end in spans)
            runner, learner = _runner_weights(algo), _learner_weights(algo)
            assert runner and set(runner) <= set(learner)
            assert all(np.array_equal(v, learner[k]) for k, v in runner.items())  # synced, not dropped
            seen[overlap] = {"updates": num_updates(algo), "counted": _lifetime_steps(algo),
                             "in_replay": len(algo.local_replay_buffer), "pending": _pending_steps(algo),
                             "spans": len(spans), "during": during}
        finally:
            algo.stop()
    on, off = seen[True], seen[False]
    assert off["during"] == 0, off  # sample, then update, in turn: the test can tell them apart
    # the learner updates while the runner steps: most updates on a quiet box (>= 16 of 32); on a loaded one
    # (load 12) the runner's fragment can start late and only a few overlap (5 of 32 seen), in turn never
    assert on["spans"] >= 1 and on["during"] >= 1, on
    # one fragment counted an iteration either way; with the overlap the last one (sampled during the last
    # updates) is stored, and trained on, by the next iteration
    assert off["counted"] == off["in_replay"] == on["counted"] == 6 * FRAGMENT and off["pending"] == 0, seen
    assert on["in_replay"] == 5 * FRAGMENT and on["pending"] == FRAGMENT, seen
    assert on["updates"] == off["updates"] - FRAGMENT > 0, seen  # updates_per_step 1: one iteration's behind


def test_train_returns_with_the_runners_idle_and_a_checkpoint_holds_every_counted_step(dot_env: str,
                                                                                       tmp_path: Path) -> None:
    from covr_ray.rl.algo import restore_checkpoint, save_checkpoint
    from covr_ray.rl.training_step import SAMPLE_TAG

    algo = _build(dot_env, True, tmp_path / "steps.txt")
    try:
        for _ in range(4):
            algo.train()
        group = algo.env_runner_group
        assert group.num_in_flight_async_reqs(tag=SAMPLE_TAG) == 0  # nothing samples between iterations
        # the fragment sampled during the last updates is counted, and kept for the next iteration's replay
        assert _lifetime_steps(algo) == 4 * FRAGMENT and _pending_steps(algo) == FRAGMENT
        assert len(algo.local_replay_buffer) == 3 * FRAGMENT
        checkpoint = save_checkpoint(algo, tmp_path / "ckpt")
        assert len(algo.local_replay_buffer) == _lifetime_steps(algo) == 4 * FRAGMENT  # stored before the save
        assert _pending_steps(algo) == 0
        algo.train()  # nothing kept: it trains on what is stored while the runner samples the next fragment
        assert _lifetime_steps(algo) == 5 * FRAGMENT and len(algo.local_replay_buffer) == 4 * FRAGMENT
    finally:
        algo.stop()
    again = _build(dot_env, True, tmp_path / "steps-again.txt")
    try:
        restore_checkpoint(again, checkpoint)  # a resumed run: every step the checkpoint counts is in its replay
        assert _lifetime_steps(again) == len(again.local_replay_buffer) == 4 * FRAGMENT
        for _ in range(2):
            again.train()
        assert _lifetime_steps(again) == 6 * FRAGMENT and len(again.local_replay_buffer) == 5 * FRAGMENT
    finally:
        again.stop()


def test_a_runner_killed_while_it_samples_is_replaced_and_sampling_goes_on(dot_env: str, tmp_path: Path) -> None:
    algo = _build(dot_env, True, tmp_path / "steps.txt")
    try:
        for _ in range(3):
            algo.train()
        group = algo.env_runner_group
        [old_pid] = group.foreach_env_runner(lambda w: os.getpid(), local_env_runner=False, timeout_seconds=60)
        counted = _lifetime_steps(algo)
        # the runner's process crashes 50 ms into the next iteration: while it samples the next fragment
        killer = threading.Timer(0.05, os.kill, (old_pid, signal.SIGKILL))
        killer.start()
        algo.train()
        killer.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _lifetime_steps(algo) < counted + 3 * FRAGMENT:
            algo.train()  # each train() probes and restarts unhealthy runners first
        assert _lifetime_steps(algo) >= counted + 3 * FRAGMENT, "sampling did not go on within 120 s"
        assert group.num_remote_worker_restarts() >= 1
        [new_pid] = group.foreach_env_runner(lambda w: os.getpid(), local_env_runner=False, timeout_seconds=60)
        assert new_pid != old_pid
        assert len(algo.local_replay_buffer) + _pending_steps(algo) == _lifetime_steps(algo)
    finally:
        algo.stop()


def test_the_setting_reaches_the_algorithm_config_and_a_bad_value_is_refused_by_name() -> None:
    from covr_ray.errors import ConfigError
    from covr_ray.rl.algo import build_algorithm_config

    assert load_config("smoke").ray.overlap_sampling is True  # on by default
    for value in (True, False):
        cfg = load_config("smoke", [f"ray.overlap_sampling={str(value).lower()}"])
        assert build_algorithm_config(cfg, env="covr_test_overlap_dot").overlap_sampling is value
    with pytest.raises(ConfigError, match="ray.overlap_sampling"):
        load_config("smoke", ["ray.overlap_sampling=3"])
