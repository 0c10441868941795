"""The RL tests' tiny pixel env and its prior-emitting wrapper (support/dot_env.py): frame stacking, and the
step ids, priors and late priors the wrapper writes into infos."""

from __future__ import annotations

import numpy as np

from covr_ray.columns import INFO_PRIOR_LATE, INFO_PRIOR_MASK, INFO_STEP_ID
from support.dot_env import DotEnv, PriorInfoWrapper


def test_dot_env_stacks_newest_frame_last() -> None:
    env = DotEnv({"size": 16, "frame_stack": 3})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 16, 16) and obs.dtype == np.uint8
    nxt, *_ = env.step(np.array([1.0, 1.0], np.float32))
    assert np.array_equal(nxt[:6], obs[3:])
    assert not np.array_equal(nxt[6:], obs[6:])


def test_prior_wrapper_emits_ids_priors_and_late_priors() -> None:
    env = PriorInfoWrapper(DotEnv({"size": 16}), every=1, fixed_prior=[0.5, -0.5], late_every=2)
    env.reset(seed=1)
    infos = [env.step(np.zeros(2, np.float32))[4] for _ in range(4)]
    assert [i[INFO_STEP_ID] for i in infos] == [0, 1, 2, 3]
    assert [i[INFO_PRIOR_MASK] for i in infos] == [1.0, 0.0, 1.0, 0.0]
    assert infos[2][INFO_PRIOR_LATE] == [(1, [0.5, -0.5])]
