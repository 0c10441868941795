"""Prior ageing: each stored prior keeps the adapter version that answered it, and priors more than
``prior.max_age_versions`` versions older than the serving adapter are masked when sampled (the base
model, -1, counts as version 0). Covered: the mask as the serving version advances (max_age 0, 1, None),
stored data untouched (a later limit reverses it), late priors with their version (wrapper -> infos ->
replay), save/load with versions, format-1 replays still loading, the RLlib adapter and the learner's
train batch (replay columns, as CovrSAC's training step makes it), the algorithm-level setter and its
metrics."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path
from typing import Any, Iterator, Optional

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from covr_ray.columns import (
    INFO_PRIOR_ACTION,
    INFO_PRIOR_LATE,
    INFO_PRIOR_MASK,
    INFO_PRIOR_VERSION,
    INFO_STEP_ID,
    PRIOR_ACTION,
    PRIOR_MASK,
)
from covr_ray.errors import CheckpointError, ReplayError
from covr_ray.rl.prior_infos import late_priors, parse_step_infos
from covr_ray.rl.replay import FORMAT_VERSION, PixelReplay
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
from support.dot_env import DotEnv, PriorInfoWrapper, register_prior_dot_env
from support.learner import MID, TS, collect_from, make_learner, tiny_cfg
from support.prior import FrameEnv, ScriptedClient

K, C, S, A = 3, 3, 8, 2
#: stored prior of each step id: (version, action); step 104 carries no prior.
STORED = {100: (-1, [0.1, 0.1]), 101: (1, [0.2, -0.2]), 102: (2, [0.3, 0.3]), 103: (3, [-0.4, 0.4])}
NO_PRIOR = 104

#: step ids whose prior is usable (mask 1) while version ``s`` serves, written out by hand from the rule
#: "masked when max(s, 0) - max(v, 0) > max_age".
EXPECTED_USABLE = {
    0: {-1: {100, 101, 102, 103}, 0: {100, 101, 102, 103}, 1: {101, 102, 103}, 2: {102, 103}, 3: {103},
        4: set(), 7: set()},
    1: {-1: {100, 101, 102, 103}, 0: {100, 101, 102, 103}, 1: {100, 101, 102, 103}, 2: {101, 102, 103},
        3: {102, 103}, 4: {103}, 5: set()},
    None: {-1: {100, 101, 102, 103}, 3: {100, 101, 102, 103}, 50: {100, 101, 102, 103}},
}


def episode_obs(t_len: int, rng: np.random.Generator) -> np.ndarray:
    """``(T+1, K*C, S, S)`` frame-stacked observations (reset repeats the first frame)."""
    frames = rng.integers(0, 256, (t_len + 1, C, S, S), dtype=np.uint8)
    padded = np.concatenate([frames[:1]] * (K - 1) + [frames])
    return np.stack([padded[t:t + K].reshape(K * C, S, S) for t in range(t_len + 1)])


def versioned_replay(seed: int = 0) -> PixelReplay:
    """Five transitions (ids 100..104): priors of versions -1, 1, 2, 3 and one step without a prior."""
    buf = PixelReplay(50, (K * C, S, S), A, K, seed=seed)
    ids = sorted(STORED) + [NO_PRIOR]
    priors = np.array([STORED[i][1] if i in STORED else [0.0, 0.0] for i in ids], np.float32)
    masks = np.array([1.0 if i in STORED else 0.0 for i in ids], np.float32)
    versions = np.array([STORED[i][0] if i in STORED else -1 for i in ids])
    buf.add_chunk("e0", episode_obs(5, np.random.default_rng(seed)), np.zeros((5, A), np.float32),
                  np.zeros(5, np.float32), True, False, step_ids=np.array(ids), prior_actions=priors,
                  prior_masks=masks, prior_versions=versions)
    return buf


def sampled_usable(buf: PixelReplay, n: int = 400) -> set:
    """Step ids sampled with mask 1; checks that each id is sampled with one mask value, the stored
    action where usable and a zero action where not, and its stored version."""
    s = buf.sample(n)
    assert s[PRIOR_MASK].dtype == np.float32
    assert set(s["step_ids"].tolist()) == set(STORED) | {NO_PRIOR}  # every row was drawn
    masks_by_id: dict[int, set] = {}
    for sid, mask, prior, version in zip(s["step_ids"].tolist(), s[PRIOR_MASK], s[PRIOR_ACTION], s["prior_version"]):
        masks_by_id.setdefault(sid, set()).add(float(mask))
        if mask == 1.0:
            np.testing.assert_allclose(prior, STORED[sid][1])
        else:
            np.testing.assert_array_equal(prior, [0.0, 0.0])  # a masked prior carries no action either
        assert version == (STORED[sid][0] if sid in STORED else -1)  # the stored version, unmasked
    assert all(len(m) == 1 for m in masks_by_id.values()), masks_by_id
    return {sid for sid, m in masks_by_id.items() if m == {1.0}}


def stored_columns(buf: PixelReplay) -> dict[str, np.ndarray]:
    return {"prior": buf._prior.copy(), "mask": buf._prior_mask.copy(), "version": buf._prior_version.copy()}


@pytest.mark.parametrize("max_age", [0, 1, None])
def test_mask_follows_the_serving_version(max_age: Optional[int]) -> None:
    buf = versioned_replay()
    before = stored_columns(buf)
    assert sampled_usable(buf) == set(STORED)  # no limit set yet: nothing ages
    for serving, expected in EXPECTED_USABLE[max_age].items():
        buf.set_prior_age_limit(serving, max_age)
        assert buf.prior_age_limit == (serving, max_age)
        stale_before = buf.counters["stale_priors_masked"]
        s_ids = sampled_usable(buf)
        assert s_ids == expected, f"serving {serving}, max_age {max_age}"
        stats = buf.stats()
        assert stats["replay/prior_coverage"] == pytest.approx(4 / 5)  # all stored priors, any age
        assert stats["replay/usable_prior_coverage"] == pytest.approx(len(expected) / 5)
        assert (buf.counters["stale_priors_masked"] > stale_before) == (len(expected) < 4)
    after = stored_columns(buf)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the stored priors are untouched
    buf.set_prior_age_limit(9, None)  # lifting the limit brings every stored prior back
    assert sampled_usable(buf) == set(STORED)


def test_stale_counter_counts_masked_sampled_rows() -> None:
    buf = versioned_replay(seed=3)
    buf.set_prior_age_limit(3, 1)  # versions -1 and 1 masked
    s = buf.sample(64)
    masked = int(np.isin(s["step_ids"], [100, 101]).sum())
    assert masked > 0 and buf.counters["stale_priors_masked"] == masked
    assert buf.counters["priors_added"] == 4  # the four priors stored with mask 1 at add time


def test_late_priors_carry_and_store_their_version() -> None:
    buf = PixelReplay(50, (K * C, S, S), A, K, seed=0)
    buf.add_chunk("e", episode_obs(4, np.random.default_rng(1)), np.zeros((4, A)), np.zeros(4), True, False,
                  step_ids=np.arange(200, 204))
    assert buf.counters["priors_added"] == 0
    attached = buf.attach_priors([(200, [0.5, 0.5], 3), (201, np.array([0.1, 0.2]), -1),
                                  (202, [0.3, 0.3]),  # an older (step_id, action) pair: version -1
                                  (999, [0.0, 0.0], 2)])  # unknown id
    assert attached == 3 and buf.counters["late_priors_missed"] == 1 and buf.counters["priors_added"] == 3
    rows = {int(buf._step_id[r]): r for r in buf._live_rows()}
    assert [int(buf._prior_version[rows[i]]) for i in (200, 201, 202, 203)] == [3, -1, -1, -1]
    buf.set_prior_age_limit(4, 1)
    s = buf.sample(200)
    assert set(s["step_ids"][s[PRIOR_MASK] == 1.0].tolist()) == {200}
    for bad in ([(201, [0.1, 0.1], -2)], [(201, [0.1, 0.1], "3")], [(201, [0.1, 0.1], True)], [(201,)]):
        with pytest.raises(ReplayError, match="version|triple"):
            buf.attach_priors(bad)


def test_bad_limits_and_versions_raise_typed_errors() -> None:
    buf = versioned_replay()
    for serving, age, named in ((-2, 1, "-2"), (1.5, 1, "1.5"), (True, 1, "True"), (2, -1, "-1"), (2, 0.5, "0.5")):
        with pytest.raises(ReplayError, match=f"{'version' if named == repr(serving) else 'max_age'} {named}"):
            buf.set_prior_age_limit(serving, age)  # type: ignore[arg-type]
    assert buf.prior_age_limit == (-1, None)  # a refused limit changes nothing
    with pytest.raises(ReplayError, match="prior_versions"):
        buf.add_chunk("x", episode_obs(2, np.random.default_rng(0)), np.zeros((2, A)), np.zeros(2), True, False,
                      prior_actions=np.zeros((2, A)), prior_masks=np.ones(2), prior_versions=np.array([1, -5]))


def test_save_load_round_trip_keeps_versions(tmp_path: Path) -> None:
    buf = versioned_replay(seed=4)
    buf.attach_priors([(NO_PRIOR, [0.9, -0.9], 2)])
    buf.save(tmp_path / "rb")
    assert json.loads((tmp_path / "rb" / "meta.json").read_text())["meta"]["version"] == FORMAT_VERSION == 2
    other = PixelReplay(50, (K * C, S, S), A, K, seed=99)
    other.set_prior_age_limit(3, 1)  # the loading buffer's limit stays: it is a setting, not saved data
    other.load(tmp_path / "rb")
    np.testing.assert_array_equal(other._prior_version, buf._prior_version)
    assert other.prior_age_limit == (3, 1)
    buf.set_prior_age_limit(3, 1)
    a, b = buf.sample(100), other.sample(100)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert set(b["step_ids"][b[PRIOR_MASK] == 1.0].tolist()) == {102, 103, NO_PRIOR}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def replay_warnings() -> Iterator[_Records]:
    handler = _Records()
    logger = logging.getLogger("covr_ray.rl.replay")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _as_format_1(path: Path) -> None:
    """Turn a saved replay directory into what format 1 wrote: no prior_version array, meta version 1."""
    (path / "prior_version.npy").unlink()
    meta = json.loads((path / "meta.json").read_text())
    meta["meta"]["version"] = 1
    (path / "meta.json").write_text(json.dumps(meta))


def test_format_1_replay_loads_with_versions_minus_one(tmp_path: Path, replay_warnings: _Records) -> None:
    buf = versioned_replay(seed=5)
    buf.save(tmp_path / "v1")
    _as_format_1(tmp_path / "v1")
    old = PixelReplay(50, (K * C, S, S), A, K)
    old.load(tmp_path / "v1")
    assert len(replay_warnings.records) == 1 and "format 1" in replay_warnings.records[0].getMessage()
    assert np.all(old._prior_version == -1)
    np.testing.assert_array_equal(old._prior_mask, buf._prior_mask)  # the priors themselves are kept
    np.testing.assert_array_equal(old._prior, buf._prior)
    assert old.stats()["replay/prior_coverage"] == pytest.approx(4 / 5)
    old.set_prior_age_limit(2, 1)  # all of them count as base-model answers now
    assert old.stats()["replay/usable_prior_coverage"] == 0.0
    old.set_prior_age_limit(1, 1)
    assert old.stats()["replay/usable_prior_coverage"] == pytest.approx(4 / 5)
    old.save(tmp_path / "v2")  # and it saves as the current format
    assert json.loads((tmp_path / "v2" / "meta.json").read_text())["meta"]["version"] == 2
    # a format-2 directory without its versions, or an unknown format, is refused
    buf.save(tmp_path / "broken")
    (tmp_path / "broken" / "prior_version.npy").unlink()
    with pytest.raises(CheckpointError):
        PixelReplay(50, (K * C, S, S), A, K).load(tmp_path / "broken")
    buf.save(tmp_path / "future")
    meta = json.loads((tmp_path / "future" / "meta.json").read_text())
    meta["meta"]["version"] = 3
    (tmp_path / "future" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 3"):
        PixelReplay(50, (K * C, S, S), A, K).load(tmp_path / "future")


# --- env side: the wrapper's late triples, and infos -> RLlib adapter ------------------------------------

def test_wrapper_late_priors_carry_the_arrivals_version() -> None:
    from covr_ray.prior.client import PriorWrapper

    client = ScriptedClient()
    env = PriorWrapper(FrameEnv(), action_dim=2, prior_every=2, valid_frames=2, client=client)  # type: ignore[arg-type]
    env.reset(seed=0)
    step = lambda: env.step(np.zeros(2, np.float32))[4]  # noqa: E731
    first = step()
    client.answer(0, [0.25, -0.5], version=7)  # covers steps 0 and 1: step 0 late, step 1 on time
    second = step()
    assert second[INFO_PRIOR_LATE] == [(first[INFO_STEP_ID], [0.25, -0.5], 7)]
    assert second[INFO_PRIOR_MASK] == 1.0 and second[INFO_PRIOR_VERSION] == 7
    third = step()
    client.answer(1, [0.5, 0.5], version=2)  # after a hot swap: query 1 (steps 2, 3) answered by v2
    fourth = step()
    assert fourth[INFO_PRIOR_LATE] == [(third[INFO_STEP_ID], [0.5, 0.5], 2)]
    assert fourth[INFO_PRIOR_MASK] == 1.0 and fourth[INFO_PRIOR_VERSION] == 2
    # what the replay reads from those infos
    _, _, masks, versions, found = parse_step_infos([first, second, third, fourth], 2)
    assert masks.tolist() == [0.0, 1.0, 0.0, 1.0] and versions.tolist() == [-1, 7, -1, 2]
    assert [(sid, v) for sid, _, v in found] == [(first[INFO_STEP_ID], 7), (third[INFO_STEP_ID], 2)]


def test_info_parsing_reads_versions_and_old_pairs() -> None:
    infos = [{INFO_STEP_ID: 5, INFO_PRIOR_ACTION: [0.1, 0.2], INFO_PRIOR_MASK: 1.0, INFO_PRIOR_VERSION: 4},
             {INFO_STEP_ID: 6, INFO_PRIOR_ACTION: [0.1, 0.2], INFO_PRIOR_MASK: 1.0},  # no version key: -1
             {INFO_STEP_ID: 7, INFO_PRIOR_MASK: 0.0, INFO_PRIOR_VERSION: 4,  # no prior: version not kept
              INFO_PRIOR_LATE: [(3, [0.0, 1.0], 2), (4, [1.0, 0.0])]}]
    _, _, masks, versions, late = parse_step_infos(infos, 2)
    assert versions.dtype == np.int32 and versions.tolist() == [4, -1, -1] and masks.tolist() == [1.0, 1.0, 0.0]
    assert late == [(3, [0.0, 1.0], 2), (4, [1.0, 0.0], -1)]
    for bad in ([(3, [0.0, 1.0], 2, 9)], [(3, [0.0, 1.0], -3)], [7]):
        with pytest.raises(ReplayError, match="prior_late|version"):
            late_priors([{INFO_PRIOR_LATE: bad}])
    with pytest.raises(ReplayError, match="step 9"):
        parse_step_infos([{INFO_STEP_ID: 9, INFO_PRIOR_ACTION: [0.0, 0.0], INFO_PRIOR_MASK: 1.0,
                           INFO_PRIOR_VERSION: "v2"}], 2)


def _chunk(obs: np.ndarray, infos: list, eps_id: str = "ep") -> SingleAgentEpisode:
    t_len = len(obs) - 1
    return SingleAgentEpisode(
        id_=eps_id, observations=list(obs), actions=[np.zeros(A, np.float32)] * t_len, rewards=[0.0] * t_len,
        infos=infos, truncated=True, t_started=0, len_lookback_buffer=0,
        observation_space=gym.spaces.Box(0, 255, (K * C, S, S), np.uint8),
        action_space=gym.spaces.Box(-1, 1, (A,), np.float32))


def test_episode_adapter_applies_a_limit_set_before_its_buffer_exists(tmp_path: Path) -> None:
    from covr_ray.rl.algo import METRIC_PATHS, learner_metrics, set_prior_age_limit

    buf = CovrEpisodeReplayBuffer(100, frame_stack=K, seed=0)
    algo = types.SimpleNamespace(local_replay_buffer=buf)
    set_prior_age_limit(algo, 3, 1)  # before any data: remembered
    assert buf.core is None and buf.prior_age_limit == (3, 1)
    with pytest.raises(ReplayError, match="max_age"):
        set_prior_age_limit(algo, 3, -1)
    infos: list[dict[str, Any]] = [{INFO_STEP_ID: -1}]
    for t, v in enumerate([-1, 1, 2, 3, None]):
        info: dict[str, Any] = {INFO_STEP_ID: 10 + t, INFO_PRIOR_MASK: 0.0}
        if v is not None:
            info.update({INFO_PRIOR_ACTION: [0.5, 0.5], INFO_PRIOR_MASK: 1.0, INFO_PRIOR_VERSION: v})
        infos.append(info)
    infos[-1][INFO_PRIOR_LATE] = [(14, [-0.5, -0.5], 3)]  # the step without a prior gets a late v3 one
    buf.add([_chunk(episode_obs(5, np.random.default_rng(2)), infos)])
    assert buf.core.prior_age_limit == (3, 1)
    s = buf.sample(300)
    assert set(s["step_ids"].tolist()) == {10, 11, 12, 13, 14}
    usable = set(s["step_ids"][s[PRIOR_MASK] == 1.0].tolist())
    assert usable == {12, 13, 14}  # versions 2, 3 and the late 3; -1 and 1 are too old for version 3
    assert np.all(s[PRIOR_ACTION][s[PRIOR_MASK] == 0.0] == 0.0)
    assert np.all(s[PRIOR_ACTION][s["step_ids"] == 14] == -0.5)  # the late prior's action
    metrics = learner_metrics({"replay_buffer": buf.get_metrics()})
    assert metrics["replay/usable_prior_coverage"] == pytest.approx(3 / 5)
    assert metrics["replay/prior_coverage"] == pytest.approx(5 / 5)
    assert metrics["replay/priors_added"] == 5  # four on time plus one late
    assert ("replay_buffer", "stale_priors_masked") in METRIC_PATHS
    # the limit also reaches a buffer rebuilt from disk, and a later hot swap moves it
    buf.save(tmp_path / "rb")
    fresh = CovrEpisodeReplayBuffer(100, frame_stack=K, seed=1)
    set_prior_age_limit(types.SimpleNamespace(local_replay_buffer=fresh), 4, 1)
    fresh.load(tmp_path / "rb")
    assert fresh.core.prior_age_limit == (4, 1)
    assert fresh.core.stats()["replay/usable_prior_coverage"] == pytest.approx(2 / 5)  # 13 and 14 (v3)
    set_prior_age_limit(types.SimpleNamespace(local_replay_buffer=fresh), 5, 1)
    assert fresh.core.stats()["replay/usable_prior_coverage"] == 0.0


# --- learner side: the real RLlib learner's train batch ---------------------------------------------------

class _VersionedPriors(gym.Wrapper):
    """Adds ``INFO_PRIOR_VERSION`` to the step infos of PriorInfoWrapper: version ``[-1, 1, 2, 3][id % 4]``."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get(INFO_PRIOR_MASK) == 1.0:
            info = {**info, INFO_PRIOR_VERSION: [-1, 1, 2, 3][info[INFO_STEP_ID] % 4]}
        return obs, reward, terminated, truncated, info


def _collect_versioned(steps: int, seed: int) -> CovrEpisodeReplayBuffer:
    return collect_from(_VersionedPriors(PriorInfoWrapper(DotEnv({"size": 24}), every=1)), steps, seed)


@pytest.mark.usefixtures("torch_one_thread")
def test_learner_train_batch_is_masked_by_age() -> None:
    from covr_ray.rl.learner import CovrSACLearner
    from covr_ray.rl.training_step import columns_batch

    class Spy(CovrSACLearner):
        seen: list = []

        def compute_loss_for_module(self, *, module_id: Any, config: Any, batch: dict, fwd_out: dict) -> Any:
            Spy.seen.append({k: batch[k].detach().clone().numpy() for k in (PRIOR_ACTION, PRIOR_MASK)})
            return super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    buf = _collect_versioned(40, seed=3)
    core = buf.core
    assert core._prior_mask[core._live_rows()].min() == 1.0  # every step has a prior, versions -1..3
    buf.set_prior_age_limit(3, 1)  # version 3 serves: -1 and 1 are too old
    learner = make_learner(tiny_cfg(lam=1.0), Spy)
    arrays = buf.sample(16)  # what CovrSAC's training step samples and hands the learner
    # expected from the stored rows themselves (by step id), not from the sampled mask
    rows = [core._id_to_row[int(sid)] for sid in arrays["step_ids"]]
    expected = np.isin(core._prior_version[rows], [2, 3]).astype(np.float32)
    assert 0 < expected.sum() < 16  # the draw holds both usable and aged priors
    Spy.seen = []
    results = learner.update(batch=columns_batch(arrays, MID), timesteps=TS)
    batch = Spy.seen[-1]
    np.testing.assert_array_equal(batch[PRIOR_MASK], expected)
    assert np.all(batch[PRIOR_ACTION][expected == 0.0] == 0.0)
    np.testing.assert_array_equal(batch[PRIOR_ACTION][expected == 1.0], core._prior[rows][expected == 1.0])
    assert np.all(np.abs(batch[PRIOR_ACTION][expected == 1.0]).sum(axis=1) > 0)
    assert results[MID]["prior_coverage"].peek() == pytest.approx(expected.mean())
    assert core.counters["stale_priors_masked"] == int(16 - expected.sum())


@pytest.fixture(scope="module")
def tiny_algo(ray_session: None) -> Iterator[Any]:
    """The whole algorithm (local Ray, no remote env runners) on the prior dot env, trained past
    learning_starts; its env writes no versions, so every stored prior counts as the base model's."""
    from covr_ray.config import load_config
    from covr_ray.rl.algo import build_algorithm_config

    env = register_prior_dot_env("covr_test_prior_age_dot")
    cfg = load_config("smoke", overrides=[
        "sac.hidden_dim=32", "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16",
        "sac.learning_starts=8", "sac.rollout_fragment_length=4", "sac.buffer_capacity=200", "sac.lam=1.0",
        "schedule.cold_start_rounds=0", "ray.num_env_runners=0", "env.image_size=24"])
    config = build_algorithm_config(cfg, env=env, env_config={"size": 24, "late_every": 2})
    config.debugging(seed=None)  # see support.learner.make_learner
    algo = config.build_algo()
    try:
        yield algo
    finally:
        algo.stop()


@pytest.mark.usefixtures("torch_one_thread")
def test_algorithm_training_follows_the_age_limit(tiny_algo: Any) -> None:
    from covr_ray.rl.algo import learner_metrics, replay_buffer, set_prior_age_limit

    set_prior_age_limit(tiny_algo, 2, 1)  # before the replay holds anything: kept for its creation
    for _ in range(3):
        metrics = learner_metrics(tiny_algo.train())
    core = replay_buffer(tiny_algo).core
    assert core.prior_age_limit == (2, 1) and np.all(core._prior_version == -1)
    assert metrics["learner/samples_trained"] > 0
    assert metrics["replay/prior_coverage"] > 0 and metrics["replay/usable_prior_coverage"] == 0.0
    assert metrics["learner/prior_coverage"] == 0.0  # every base-model prior is 2 versions old
    assert metrics["replay/priors_added"] > 0
    masked = core.counters["stale_priors_masked"]
    # RLlib averages the values aggregated at each update of an iteration: the last iteration's count
    assert masked > 0 and 0 < metrics["replay/stale_priors_masked"] <= masked
    set_prior_age_limit(tiny_algo, 1, 1)  # one version old: usable again
    metrics = learner_metrics(tiny_algo.train())
    assert metrics["learner/prior_coverage"] > 0
    assert metrics["replay/usable_prior_coverage"] == pytest.approx(metrics["replay/prior_coverage"])
    assert core.counters["stale_priors_masked"] == masked


def test_replay_metrics_report_the_stale_count_of_the_latest_samples() -> None:
    from covr_ray.rl.algo import learner_metrics

    buf = CovrEpisodeReplayBuffer(100, frame_stack=K, seed=0)
    infos: list[dict[str, Any]] = [{}] + [{INFO_STEP_ID: t, INFO_PRIOR_ACTION: [0.1, 0.1], INFO_PRIOR_MASK: 1.0,
                                           INFO_PRIOR_VERSION: -1} for t in range(4)]
    buf.add([_chunk(episode_obs(4, np.random.default_rng(0)), infos)])
    assert learner_metrics({"replay_buffer": buf.get_metrics()})["replay/stale_priors_masked"] == 0
    buf.set_prior_age_limit(3, 1)
    buf.sample(10)  # the training step samples after the add, then reads the metrics
    assert learner_metrics({"replay_buffer": buf.get_metrics()})["replay/stale_priors_masked"] == 10
    buf.core.sample(6)  # straight from the core counts too
    assert learner_metrics({"replay_buffer": buf.get_metrics()})["replay/stale_priors_masked"] == 16
