"""Wrappers and helpers shared by every family: frame resize, action checks, channel-first frame stack, seeding.

The pipeline :func:`covr_envs.registry.make_env` builds, inner to outer::

    core env  (obs: one RGB frame (S, S, 3) uint8; action repeat inside; info["env_steps"])
    -> TimeLimit       (agent steps, optional)
    -> FrameStackCHW   (obs: (3 * k, S, S) uint8; render() = the newest single frame (S, S, 3))
    -> SeededReset     (first reset() without a seed uses the construction seed)

Every core env repeats the action itself and renders (or reads pixels) once per agent step, so frames are
never drawn for intermediate simulator steps.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from covr_ray.errors import EnvError


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Any image to the RGB frame the agent and the VLM see.

    Args:
        frame: (H, W, 3) or (H, W, 4) or (H, W) or (H, W, 1), uint8 or float in [0, 1] / [0, 255].
        size: S, output height and width.

    Returns:
        (S, S, 3) uint8, C-contiguous. Downscaling uses area averaging (no aliasing of thin lane lines).
    """
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise EnvError(f"expected an image (H, W, 3|4) or (H, W); got an array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(arr.dtype, np.floating) and float(np.nanmax(arr, initial=0)) <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if arr.shape[0] != size or arr.shape[1] != size:
        shrink = arr.shape[0] > size or arr.shape[1] > size
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(arr)


def frame_space(size: int) -> spaces.Box:
    """Observation space of a core env: one RGB frame ``(S, S, 3) uint8``."""
    return spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)


def unit_action_space(dim: int) -> spaces.Box:
    """``Box(float32, [-1, 1]^dim)``: the action space every COVR env exposes."""
    return spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32)


def check_action(action: Any, dim: int, env_name: str) -> np.ndarray:
    """``action`` as float32 (dim,) clipped to [-1, 1]; a wrong shape or a NaN raises EnvError."""
    arr = np.asarray(action, dtype=np.float32).reshape(-1)
    if arr.shape != (dim,):
        raise EnvError(f"{env_name}: action must have shape ({dim},), got {np.shape(action)}")
    if not np.all(np.isfinite(arr)):
        raise EnvError(f"{env_name}: action must be finite, got {arr.tolist()}")
    return np.clip(arr, -1.0, 1.0)


class FrameStackCHW(gym.Wrapper):
    """Stack the last ``k`` RGB frames channel-first.

    Input obs: (S, S, 3) uint8. Output obs: (3 * k, S, S) uint8, oldest frame first; on reset the first
    frame fills every slot. ``render()`` returns the newest single frame (S, S, 3) uint8, a copy.
    """

    def __init__(self, env: gym.Env, k: int) -> None:
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
                and space.shape[-1] == 3):
            raise EnvError(f"FrameStackCHW needs (H, W, 3) uint8 frames, got {space}")
        if k < 1:
            raise EnvError(f"frame_stack must be >= 1, got {k}")
        self.k = k
        h, w, _ = space.shape
        self.observation_space = spaces.Box(0, 255, shape=(3 * k, h, w), dtype=np.uint8)
        self._frames: deque[np.ndarray] = deque(maxlen=k)
        self._last: Optional[np.ndarray] = None

    def _obs(self) -> np.ndarray:
        return np.concatenate(list(self._frames), axis=0)

    def _push(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame, dtype=np.uint8)
        self._last = frame
        self._frames.append(np.ascontiguousarray(frame.transpose(2, 0, 1)))

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        frame, info = self.env.reset(**kwargs)
        self._frames.clear()
        for _ in range(self.k):
            self._push(frame)
        return self._obs(), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        self._push(frame)
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The newest single RGB frame, (S, S, 3) uint8: what the VLM sees."""
        if self._last is None:
            raise EnvError("render() before reset(): there is no frame yet")
        return self._last.copy()


class SeededReset(gym.Wrapper):
    """Seed the env at construction: the first ``reset()`` without a seed uses ``seed``.

    Later resets without a seed continue the env's own random stream, so a run is reproducible from the
    construction seed alone; ``reset(seed=s)`` reseeds as usual. The action space is seeded too.
    """

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        self.seed_value = int(seed)
        self._seeded = False
        self.action_space.seed(self.seed_value)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[Any, dict[str, Any]]:
        if seed is None and not self._seeded:
            seed = self.seed_value
        self._seeded = True
        return self.env.reset(seed=seed, options=options)

    def render(self) -> np.ndarray:
        return self.env.render()
