"""SAC's training iteration with train batches taken from the replay as columns.

RLlib's own SAC iteration samples its replay as a list of 1-step episodes and runs the learner
connector over them (episode slicing, per-episode batching, stacking). For pixel batches that data
path dominates a GPU update: at batch 512 of 9x84x84 observations it cost 158 ms per update on the
2-core CPU box versus 17 ms for the same transitions taken as arrays. COVR uses only the columnar one.

This iteration is RLlib's (DQN/SAC ``_training_step_new_api_stack``: sample the env runners, add the
episodes to the replay, then ``round(updates_per_step * sampled steps)`` updates once learning has
started, then sync weights) with one change: each update's batch is
:meth:`~covr_ray.rl.rllib_replay.CovrEpisodeReplayBuffer.sample` output (the arrays of
:meth:`~covr_ray.rl.replay.PixelReplay.sample`), with the prior columns ``prior_action`` /
``prior_mask`` read straight from the replay, made into a ``MultiAgentBatch`` by :func:`columns_batch`
and handed to ``Learner.update(batch=...)`` (RLlib's learner connector does not run on a batch).
``tests/test_rl_bench.py`` checks that update against the plain-PyTorch reference
(:mod:`covr_ray.rl.plain`).

**Sampling while the learner updates** (``ray.overlap_sampling``, on by default, remote env runners only).
RLlib's iteration samples, then updates: the env runners idle while the learner works and the learner idles
while they sample, so the parallelism of a distributed actor-learner system is never collected (on 2 cores
the distributed base ran at 0.93-0.99x a single-process loop). With the overlap, an iteration stores the
fragment sampled during the previous iteration's updates, launches the next one, runs its updates while the
runners sample it, then waits for it, counts it and keeps its episodes for the next iteration
(:func:`settle_sampling`): an iteration lasts about max(sampling, updates) instead of their sum, ``train()``
returns with the runners idle (RLlib's end-of-iteration sync of their connector states would otherwise wait
for them, 10 s timeout), and the algorithm's count of sampled steps is what the runners sampled (RLlib
broadcasts it back to them each iteration and the module's warm-up follows it; counting a fragment only when
stored would wind their count back and stretch the warm-up). One fragment is counted per iteration, as in
turn; a fragment's updates run one iteration after it was sampled (after ``n`` iterations the replay and
the updates are one fragment behind the count). The weights are synced after the wait; Ray runs one caller's
calls to an actor in order, so a fragment is sampled with the weights from before the updates it overlaps:
one iteration of policy lag (``rollout_fragment_length`` env steps; harmless for an off-policy learner). A
checkpoint stores the kept fragment first (:func:`store_pending`), so it holds every step it counts. A runner
that dies mid-fragment is marked unhealthy and restarted by the next ``train()``, as with RLlib's own
sampling. Tests: tests/test_rl_overlap.py.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import numpy as np
from ray.rllib.algorithms.dqn.dqn import calculate_rr_weights
from ray.rllib.core.columns import Columns
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    REPLAY_BUFFER_ADD_DATA_TIMER,
    REPLAY_BUFFER_RESULTS,
    REPLAY_BUFFER_SAMPLE_TIMER,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TD_ERROR_KEY,
    TIMERS,
)

from covr_ray.columns import PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import LearnerError

logger = logging.getLogger(__name__)


def columns_batch(arrays: Dict[str, np.ndarray], module_id: str) -> MultiAgentBatch:
    """Train batch for SAC's loss from :meth:`PixelReplay.sample` arrays (1-step transitions): RLlib's
    columns plus ``weights`` (ones: uniform replay), ``n_step`` (ones) and the prior columns."""
    b = len(arrays["rewards"])
    cols = {
        Columns.OBS: arrays["obs"], Columns.NEXT_OBS: arrays["next_obs"], Columns.ACTIONS: arrays["actions"],
        Columns.REWARDS: arrays["rewards"], Columns.TERMINATEDS: arrays["terminateds"],
        Columns.TRUNCATEDS: arrays["truncateds"], "weights": np.ones(b, np.float32),
        "n_step": np.ones(b, np.int64), PRIOR_ACTION: arrays[PRIOR_ACTION], PRIOR_MASK: arrays[PRIOR_MASK],
    }
    return MultiAgentBatch({module_id: SampleBatch(cols)}, env_steps=b)


#: tag of the overlapped sample requests (:func:`launch_sample`) among the env runners' async requests.
SAMPLE_TAG = "covr_sample"
#: timer of the driver's wait, after an overlapped iteration's updates, for the fragment sampled meanwhile.
SAMPLE_WAIT_TIMER = "overlap_sample_wait_timer"


def overlaps_sampling(algo: Any) -> bool:
    """Whether ``algo`` samples its remote env runners while its learner updates (``ray.overlap_sampling``:
    configs pickled before that setting existed, and runs sampling in the driver, do not)."""
    return bool(getattr(algo.config, "overlap_sampling", False)) and algo.env_runner_group.num_remote_workers() > 0


def launch_sample(algo: Any) -> int:
    """Ask every healthy remote env runner for its next fragment (and its metrics) without waiting; the
    runners sample with the weights they hold now. Returns the number of requests made."""
    return algo.env_runner_group.foreach_env_runner_async(lambda w: (w.sample(), w.get_metrics()), tag=SAMPLE_TAG)


def _collect_sample(algo: Any) -> list[Any]:
    """Wait for the fragments in flight (all back, or ``sample_timeout_s`` ran out; a runner that died is
    marked unhealthy and restarted by the next ``train()``, as RLlib does), count them (their env-runner
    metrics go into the algorithm's now) and return their episodes."""
    group = algo.env_runner_group
    if group.num_in_flight_async_reqs(tag=SAMPLE_TAG) == 0:
        return []
    got = [r for _, r in group.fetch_ready_async_reqs(tags=SAMPLE_TAG, timeout_seconds=algo.config.sample_timeout_s)]
    if not got:
        logger.warning("no fragment came back from the env runners within sample_timeout_s=%s s",
                       algo.config.sample_timeout_s)
    algo.metrics.aggregate([m for _, m in got], key=ENV_RUNNER_RESULTS)
    return [e for episodes, _ in got for e in episodes]


def pending_episodes(algo: Any) -> list[Any]:
    """Episode chunks sampled and counted but not yet in the replay (the fragment sampled during the last
    iteration's updates, stored by the next iteration)."""
    return list(getattr(algo, "_covr_pending_episodes", []))


def settle_sampling(algo: Any) -> None:
    """Wait for the fragment in flight, count it, and keep its episodes for the next iteration's replay
    add: after this no env runner samples for ``algo``. The end of every overlapped iteration calls it, so
    ``train()`` returns with the runners idle and the algorithm's count of sampled steps equal to what the
    runners sampled (RLlib broadcasts that count back to them, and their warm-up follows it)."""
    if overlaps_sampling(algo):
        algo._covr_pending_episodes = pending_episodes(algo) + _collect_sample(algo)


def store_pending(algo: Any) -> None:
    """Settle, then put the kept episodes into the replay now (:meth:`CovrSAC.save_to_path`: a checkpoint
    holds every step it counts)."""
    settle_sampling(algo)
    episodes, algo._covr_pending_episodes = pending_episodes(algo), []
    if episodes:
        algo.local_replay_buffer.add(episodes)


def _overlapped_sample(algo: Any) -> list[Any]:
    """The episodes kept from the previous iteration (sampled and counted while its learner updated; none
    in the first iteration and after a checkpoint or a restore), and the next fragment launched, to be
    sampled during this iteration's updates. One fragment per iteration, as in turn."""
    episodes, algo._covr_pending_episodes = pending_episodes(algo), []
    if algo.env_runner_group.num_in_flight_async_reqs(tag=SAMPLE_TAG) == 0:  # else: one still out (timed out)
        launch_sample(algo)
    return episodes


def columnar_training_step(algo: Any, module_id: str) -> None:
    """One SAC training iteration of ``algo`` (a :class:`covr_ray.rl.algo.CovrSAC`) on columnar batches."""
    config = algo.config
    replay = algo.local_replay_buffer
    store_weight, sample_and_train_weight = calculate_rr_weights(config)
    overlap = overlaps_sampling(algo)
    for _ in range(store_weight):
        with algo.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            if overlap:
                episodes = _overlapped_sample(algo)  # counted when it arrived
            else:
                episodes, env_runner_results = synchronous_parallel_sample(
                    worker_set=algo.env_runner_group, concat=True, sample_timeout_s=config.sample_timeout_s,
                    _uses_new_env_runners=True, _return_metrics=True)
                algo.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        with algo.metrics.log_time((TIMERS, REPLAY_BUFFER_ADD_DATA_TIMER)):
            replay.add(episodes)
    learner_results = _updates(algo, module_id, sample_and_train_weight)
    if overlap:
        with algo.metrics.log_time((TIMERS, SAMPLE_WAIT_TIMER)):
            settle_sampling(algo)  # the fragment sampled during the updates: the next iteration's
    if learner_results is None:
        return
    with algo.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
        algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group,
                                           policies=set(learner_results[0].keys()) - {ALL_MODULES},
                                           global_vars=None, inference_only=True)


def _updates(algo: Any, module_id: str, sample_and_train_weight: int) -> Any:
    """The iteration's ``sample_and_train_weight`` updates once learning has started; their results (None
    before that)."""
    config, replay = algo.config, algo.local_replay_buffer
    env_steps = algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
    if env_steps < config.num_steps_sampled_before_learning_starts or replay.core is None or not len(replay):
        return None
    timesteps = {
        NUM_ENV_STEPS_SAMPLED_LIFETIME: env_steps,
        NUM_AGENT_STEPS_SAMPLED_LIFETIME: algo.metrics.peek(
            (ENV_RUNNER_RESULTS, NUM_AGENT_STEPS_SAMPLED_LIFETIME), default={}),
    }
    learner_results = None
    for _ in range(sample_and_train_weight):
        with algo.metrics.log_time((TIMERS, REPLAY_BUFFER_SAMPLE_TIMER)):
            # the update consumes the batch before the next sample: the replay's buffers can be reused
            batch = columns_batch(replay.sample(config.total_train_batch_size, reuse_buffers=True), module_id)
        algo.metrics.aggregate([replay.get_metrics()], key=REPLAY_BUFFER_RESULTS)
        with algo.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = algo.learner_group.update(batch=batch, timesteps=timesteps)
            for res in learner_results:  # per-sample TD errors are large and unused (uniform replay)
                for module_results in res.values():
                    module_results.pop(TD_ERROR_KEY, None)
            algo.metrics.aggregate(learner_results, key=LEARNER_RESULTS)
    if learner_results is None:
        raise LearnerError(f"no update ran: {sample_and_train_weight} updates an iteration")
    return learner_results
