"""Frame-stacked episodes of random frames, for the D_f critic-scoring and bootstrap tests."""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np

from covr_envs.wrappers import FrameStackCHW


class _NoiseFrames(gym.Env):
    """(8, 8, 3) random frames, one per step, 1-D actions."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.np_random.integers(0, 256, (8, 8, 3), dtype=np.uint8), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.np_random.integers(0, 256, (8, 8, 3), dtype=np.uint8), 1.0, False, False, {}


def episode(steps: int, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs (T, 3k, 8, 8) as the env stacked them, frames (T, 8, 8, 3) as D_f stores them, actions (T, 1))."""
    env = FrameStackCHW(_NoiseFrames(), k)
    obs, _ = env.reset(seed=seed)
    observations, frames = [obs], [env.render()]
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 1)).astype(np.float32)
    for a in actions[:-1]:
        obs, *_ = env.step(a)
        observations.append(obs)
        frames.append(env.render())
    return np.stack(observations), np.stack(frames), actions
