"""Stand-ins for the prior path's ends, for the wrapper and prior-age tests.

``FrameEnv``: an env whose rendered frames hold the step index; ``ScriptedClient``: a prior client whose
answers arrive exactly when the test says (so arrival timing is deterministic).
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np

from covr_ray.prior.client import Arrival


class FrameEnv(gym.Env):
    """Counts steps; renders an (84, 84, 3) frame whose pixels hold the step index; ends after ``length``."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, length: int = 100, bad_frame: bool = False) -> None:
        self.length = length
        self.bad_frame = bad_frame
        self.observation_space = gym.spaces.Box(0, 255, (4,), np.uint8)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.t = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.uint8), {"env_key": "reset"}

    def step(self, action):
        self.t += 1
        return np.zeros(4, np.uint8), 1.0, self.t >= self.length, False, {"env_key": self.t}

    def render(self):
        if self.bad_frame:
            return np.zeros((84, 84), np.float32)
        return np.full((84, 84, 3), self.t % 256, np.uint8)


class ScriptedClient:
    """Records queries; ``answer(i, action)`` makes query i's answer arrive at the next poll."""

    def __init__(self) -> None:
        self.sent: list[tuple[np.ndarray, int, list[int]]] = []
        self._ready: list[Arrival] = []

    def send(self, frame: np.ndarray, episode: int, step_ids: list[int]) -> bool:
        self.sent.append((frame, episode, step_ids))
        return True

    def answer(self, i: int, action: Optional[list[float]], version: int = 3) -> None:
        _, episode, ids = self.sent[i]
        self._ready.append(Arrival(episode, ids, None if action is None else np.asarray(action, np.float32),
                                   version))

    def poll(self) -> list[Arrival]:
        out, self._ready = self._ready, []
        return out
