"""The env-side wrapper's bookkeeping: which transition a prior belongs to, late priors, episode edges.

The service side is replaced here by a scripted client (support/prior.py) that answers exactly when the
test says, so arrival timing is deterministic; the real client against the real service (Ray, restarts,
timeouts) is tested in test_prior_service.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_LATE, INFO_PRIOR_MASK, INFO_PRIOR_VERSION, INFO_STEP_ID
from covr_ray.errors import ConfigError, EnvError
from covr_ray.prior.client import PriorWrapper
from support.prior import FrameEnv, ScriptedClient


def _wrap(prior_every: int = 3, valid_frames: int = 1, length: int = 100, **kw: Any):
    client = ScriptedClient()
    env = PriorWrapper(FrameEnv(length=length, **kw), action_dim=2, prior_every=prior_every,
                       valid_frames=valid_frames, client=client)  # type: ignore[arg-type]
    return env, client


def _step(env: PriorWrapper) -> dict[str, Any]:
    return env.step(np.zeros(2, np.float32))[4]


def test_queries_every_nth_step_with_the_frame_the_policy_acts_on() -> None:
    env, client = _wrap(prior_every=3)
    _, info = env.reset(seed=0)
    assert info[INFO_STEP_ID] == -1 and info[INFO_PRIOR_MASK] == 0.0 and info["env_key"] == "reset"
    ids = [_step(env)[INFO_STEP_ID] for _ in range(7)]
    assert len(set(ids)) == 7 and ids == list(range(ids[0], ids[0] + 7)) and ids[0] > 0
    # queries for transitions 0, 3, 6 were sent with o_0, o_3, o_6 (frame pixel = env step count)
    assert [ids_[0] for _, _, ids_ in client.sent] == [ids[0], ids[3], ids[6]]
    assert [int(f[0, 0, 0]) for f, _, _ in client.sent] == [0, 3, 6]


def test_prior_arriving_in_time_is_attached_to_its_own_step_only() -> None:
    env, client = _wrap(prior_every=3, valid_frames=1)
    env.reset(seed=0)
    client.answer(0, [0.5, -0.25])
    infos = [_step(env) for _ in range(3)]
    assert infos[0][INFO_PRIOR_MASK] == 1.0 and infos[0][INFO_PRIOR_ACTION] == [0.5, -0.25]
    assert infos[0][INFO_PRIOR_VERSION] == 3
    for info in infos[1:]:
        assert info[INFO_PRIOR_MASK] == 0.0 and info[INFO_PRIOR_ACTION] == [0.0, 0.0]
        assert info[INFO_PRIOR_VERSION] == -1 and info[INFO_PRIOR_LATE] == []


@pytest.mark.parametrize("valid_frames,arrive_after,late_steps,direct_steps", [
    (1, 2, [0], []),          # own frame only, arrives 2 steps late
    (2, 2, [0, 1], []),       # covers t and t+1, both already emitted
    (3, 1, [0], [1, 2]),      # arrives during step 1: step 0 late, steps 1 and 2 get it directly
])
def test_late_priors_name_the_earlier_steps_they_belong_to(valid_frames: int, arrive_after: int,
                                                           late_steps: list[int], direct_steps: list[int]) -> None:
    env, client = _wrap(prior_every=3, valid_frames=valid_frames)
    env.reset(seed=0)
    infos = [_step(env) for _ in range(arrive_after)]
    client.answer(0, [0.1, 0.2])
    infos += [_step(env) for _ in range(3 - arrive_after)]
    ids = [i[INFO_STEP_ID] for i in infos]
    late = [entry for i in infos for entry in i[INFO_PRIOR_LATE]]
    assert [sid for sid, _, _ in late] == [ids[k] for k in late_steps]
    assert all(a == pytest.approx([0.1, 0.2]) and v == 3 for _, a, v in late)  # ScriptedClient answers as v3
    assert [k for k, i in enumerate(infos) if i[INFO_PRIOR_MASK] == 1.0] == direct_steps
    # the late prior is reported once, in the step right after it arrived
    assert all(i[INFO_PRIOR_LATE] == [] for i in infos[arrive_after + 1:])


def test_prior_never_crosses_into_the_next_episode() -> None:
    env, client = _wrap(prior_every=3, valid_frames=3, length=2)
    env.reset(seed=0)
    first = [_step(env) for _ in range(2)]  # episode ends after 2 transitions
    _, reset_info = env.reset(seed=1)
    client.answer(0, [1.0, 1.0])  # answer of episode 0's query arrives during episode 1
    second = _step(env)
    late = second[INFO_PRIOR_LATE]
    assert [sid for sid, _, _ in late] == [first[0][INFO_STEP_ID], first[1][INFO_STEP_ID]]
    assert second[INFO_STEP_ID] == first[1][INFO_STEP_ID] + 1  # consecutive id, but another episode
    assert second[INFO_PRIOR_MASK] == 0.0 and reset_info[INFO_PRIOR_LATE] == []


def test_answers_without_an_action_give_no_prior_and_stale_queries_are_harmless() -> None:
    env, client = _wrap(prior_every=1)
    env.reset(seed=0)
    client.answer(0, None)
    info = _step(env)
    assert info[INFO_PRIOR_MASK] == 0.0 and info[INFO_PRIOR_LATE] == []
    client.answer(1, [0.3, 0.3])
    assert _step(env)[INFO_PRIOR_MASK] == 1.0


def test_disabled_client_and_bad_configuration() -> None:
    env = PriorWrapper(FrameEnv(), action_dim=2, client=None)
    env.reset(seed=0)
    info = _step(env)
    assert info[INFO_PRIOR_MASK] == 0.0 and info[INFO_STEP_ID] >= 0
    assert env.prior_stats()["prior_client/with_prior_frac"] == 0.0
    with pytest.raises(ConfigError, match="valid_frames"):
        PriorWrapper(FrameEnv(), action_dim=2, prior_every=2, valid_frames=3)
    with pytest.raises(ConfigError, match="prior_every"):
        PriorWrapper(FrameEnv(), action_dim=2, prior_every=0)
    bad, _ = _wrap(bad_frame=True)
    with pytest.raises(EnvError, match="uint8 \\(H, W, 3\\)"):
        bad.reset(seed=0)
    fresh, _ = _wrap()
    with pytest.raises(EnvError, match="reset"):
        _step(fresh)


def test_env_runners_are_spread_over_the_replicas() -> None:
    from covr_ray.config import load_config
    from covr_ray.prior.service import prior_actor_name

    cfg = load_config("driving-hw", ["ray.prior_replicas=3", "prior.prior_every=5", "prior.valid_frames=2"])
    names = [PriorWrapper.from_config(FrameEnv(), cfg, run_id="r7", worker_index=w, action_dim=2).client.service_name
             for w in range(1, 7)]
    assert names == [prior_actor_name("r7", w % 3) for w in range(1, 7)]
    env = PriorWrapper.from_config(FrameEnv(), cfg, run_id="r7", worker_index=1, action_dim=2)
    assert (env.prior_every, env.valid_frames) == (5, 2)
    off = load_config("driving-hw", ["prior.enabled=false"])
    assert PriorWrapper.from_config(FrameEnv(), off, run_id="r7", worker_index=1, action_dim=2).client is None


def test_the_client_looks_for_answers_at_most_every_poll_every_s(ray_session) -> None:
    """The real client (Ray refs, ``ray.wait``) against an actor answering at once as the service would: an
    answer ready within ``poll_every_s`` of the previous look is returned by the first look after it."""
    import time

    import ray

    from covr_ray.prior.client import PriorClient

    @ray.remote(num_cpus=0)
    class Answers:
        def query(self, frame: np.ndarray, prompt: Any, sent_at: float) -> dict[str, Any]:
            return {"action": [float(frame[0, 0, 0]) / 100, 0.0], "version": 2}

    def ready(client: PriorClient) -> None:
        ray.wait([q.ref for q in client._inflight], num_returns=client.in_flight, timeout=60)

    frame = np.full((84, 84, 3), 50, np.uint8)
    period = 3.0  # far longer than an answer of a local actor takes, so the second answer is ready inside it
    client = PriorClient(service=Answers.remote(), poll_every_s=period)
    client.send(frame, 0, [1])
    ready(client)
    (first,) = client.poll()
    looked = time.monotonic()
    assert first.step_ids == [1] and first.action.tolist() == [0.5, 0.0] and first.version == 2
    client.send(frame, 0, [2])
    ready(client)
    assert client.poll() == [] and time.monotonic() - looked < period  # ready, but not looked for yet
    time.sleep(max(0.0, looked + period - time.monotonic()))
    assert [a.step_ids for a in client.poll()] == [[2]] and client.counts["answered"] == 2
    every = PriorClient(service=Answers.remote(), poll_every_s=0.0)  # 0: every call looks
    every.send(frame, 0, [3])
    ready(every)
    assert [a.step_ids for a in every.poll()] == [[3]]
    from covr_ray.config import load_config

    assert load_config("smoke").prior.poll_every_s == 0.02
    with pytest.raises(ConfigError, match="prior.poll_every_s"):
        load_config("smoke", ["prior.poll_every_s=-0.1"])
