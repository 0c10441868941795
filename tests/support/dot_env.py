"""A tiny pixel env and a prior-emitting wrapper for the RL tests.

``DotEnv``: a white dot on black, moved by a 2-D velocity action in [-1, 1]; reward = -distance to the
centre; observations are the last ``frame_stack`` RGB frames stacked on channels, newest last, uint8
``(3 * frame_stack, S, S)`` - the same contract as covr_envs' pixel envs. Optionally each step sleeps
(``step_sleep_s``: a slower simulator) and appends its start and end times to a file (``step_log``).

``PriorInfoWrapper``: writes the env-side prior contract of covr_ray.columns into step infos: a unique
step id per transition, a prior every ``every`` steps (the oracle action toward the centre, or a fixed
one), and - when ``late_every`` is set - some priors one step late under ``INFO_PRIOR_LATE``.

``make_prior_dot_env`` builds both from one RLlib env config; ``register_prior_dot_env`` registers it
with Ray Tune under a name (the env of the algorithm-level tests). Their own tests: test_rl_testenv.py.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_LATE, INFO_PRIOR_MASK, INFO_STEP_ID


class DotEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, config: Optional[dict] = None) -> None:
        config = dict(config or {})
        self.size = int(config.get("size", 24))
        self.frame_stack = int(config.get("frame_stack", 3))
        self.max_steps = int(config.get("max_steps", 20))
        self.step_sleep_s = float(config.get("step_sleep_s", 0.0))  # a slower simulator
        self.step_log = config.get("step_log")  # a file to append "<start> <end>" (time.time()) of each step to
        self.observation_space = gym.spaces.Box(0, 255, (3 * self.frame_stack, self.size, self.size), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)
        self._frames: list[np.ndarray] = []
        self._t = 0

    def _frame(self) -> np.ndarray:
        img = np.zeros((3, self.size, self.size), np.uint8)
        px = np.clip(((self._pos + 1.0) / 2.0 * (self.size - 2)).astype(int), 0, self.size - 2)
        img[:, px[1]:px[1] + 2, px[0]:px[0] + 2] = 255
        return img

    def _obs(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=0)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-0.9, 0.9, 2)
        self._t = 0
        self._frames = [self._frame()] * self.frame_stack
        return self._obs(), {}

    def oracle_action(self) -> np.ndarray:
        return np.clip(-self._pos * 2.0, -1.0, 1.0).astype(np.float32)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = time.time()
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        if self.step_log:
            with open(self.step_log, "a") as fh:
                fh.write(f"{started} {time.time()}\n")
        a = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        self._pos = np.clip(self._pos + 0.2 * a, -1.0, 1.0)
        self._t += 1
        self._frames = self._frames[1:] + [self._frame()]
        reward = -float(np.linalg.norm(self._pos))
        return self._obs(), reward, False, self._t >= self.max_steps, {}


class PriorInfoWrapper(gym.Wrapper):
    """Adds step ids and priors to infos (see the module docstring)."""

    def __init__(self, env: gym.Env, every: int = 2, fixed_prior: Optional[list[float]] = None,
                 late_every: int = 0, id_base: int = 0) -> None:
        super().__init__(env)
        self.every, self.fixed_prior, self.late_every = every, fixed_prior, late_every
        self._next_id = id_base
        self._pending: list[tuple[int, list[float]]] = []
        self._t = 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        self._t = 0
        info = dict(info)
        if self._pending:
            info[INFO_PRIOR_LATE] = self._pending
            self._pending = []
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        prior = (list(self.fixed_prior) if self.fixed_prior is not None
                 else self.env.unwrapped.oracle_action().tolist())
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        step_id = self._next_id
        self._next_id += 1
        info[INFO_STEP_ID] = step_id
        if self._pending:
            info[INFO_PRIOR_LATE] = self._pending
            self._pending = []
        if self._t % self.every == 0:
            if self.late_every and (self._t // self.every) % self.late_every == 1:
                self._pending = [(step_id, prior)]
                info[INFO_PRIOR_MASK] = 0.0
            else:
                info[INFO_PRIOR_ACTION] = prior
                info[INFO_PRIOR_MASK] = 1.0
        else:
            info[INFO_PRIOR_MASK] = 0.0
        self._t += 1
        return obs, reward, terminated, truncated, info


def make_prior_dot_env(config: Optional[dict] = None) -> gym.Env:
    """Env creator for RLlib (``tune.register_env``): DotEnv + PriorInfoWrapper from one config dict."""
    config = dict(config or {})
    worker = int(getattr(config, "worker_index", 0)) * 100 + int(getattr(config, "vector_index", 0))
    return PriorInfoWrapper(DotEnv(config), every=int(config.get("prior_every", 2)),
                            fixed_prior=config.get("fixed_prior"), late_every=int(config.get("late_every", 0)),
                            id_base=worker * 1_000_000)


def register_prior_dot_env(name: str) -> str:
    """Registers :func:`make_prior_dot_env` with Ray Tune as ``name`` (for ``build_algorithm_config(env=name)``)."""
    from ray.tune.registry import register_env

    register_env(name, make_prior_dot_env)
    return name
