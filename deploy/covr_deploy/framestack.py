"""Build the policy's observation from raw RGB frames fed one at a time.

Training stacked the last ``k`` RGB frames channels-first, oldest first, and on reset filled every slot
with the first frame (covr_envs' ``FrameStackCHW``). Feed frames the same way::

    stacker = policy.frame_stacker()            # or FrameStacker(frame_stack=3, image_size=84)
    obs = stacker.reset(first_frame)            # (H, W, 3) uint8 -> (9, 84, 84) uint8
    while running:
        action = policy.act(obs)
        obs = stacker.push(next_frame)

Frames must be ``(image_size, image_size, 3)`` uint8 RGB. With ``resize=True`` larger or smaller frames
are resized like training did (area averaging when shrinking, bilinear when growing; needs opencv).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from covr_deploy.errors import DeployError, ObservationError


class FrameStacker:
    """Keeps the last ``frame_stack`` frames; returns ``(3 * frame_stack, S, S)`` uint8 observations."""

    def __init__(self, frame_stack: int, image_size: int, resize: bool = False) -> None:
        if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
            raise DeployError(f"frame_stack {frame_stack!r}; allowed: an integer >= 1")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise DeployError(f"image_size {image_size!r}; allowed: an integer >= 1")
        self.frame_stack = frame_stack
        self.image_size = image_size
        self.resize = resize
        self._frames: deque[np.ndarray] = deque(maxlen=frame_stack)

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """``(3 * frame_stack, image_size, image_size)``."""
        return (3 * self.frame_stack, self.image_size, self.image_size)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise ObservationError(f"frame of shape {arr.shape} and dtype {arr.dtype}; expected (H, W, 3) "
                                   "uint8 RGB")
        size = self.image_size
        if arr.shape[:2] != (size, size):
            if not self.resize:
                raise ObservationError(f"frame of size {arr.shape[1]}x{arr.shape[0]}; the policy takes "
                                       f"{size}x{size} frames (resize them, or pass resize=True)")
            try:
                import cv2
            except ImportError as exc:
                raise DeployError("resize=True needs opencv: pip install opencv-python-headless") from exc
            shrink = arr.shape[0] > size or arr.shape[1] > size
            arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Start an episode: every slot holds ``frame``. Returns the observation."""
        chw = self._prepare(frame)
        self._frames.clear()
        for _ in range(self.frame_stack):
            self._frames.append(chw)
        return self.observation()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Add the newest frame (dropping the oldest). Returns the observation.

        Raises:
            DeployError: :meth:`reset` was not called first.
        """
        if not self._frames:
            raise DeployError("push() before reset(): call reset(first_frame) at the start of each episode")
        self._frames.append(self._prepare(frame))
        return self.observation()

    def observation(self) -> np.ndarray:
        """The current observation, ``(3 * frame_stack, S, S)`` uint8 (a new array)."""
        if not self._frames:
            raise DeployError("no frames yet: call reset(first_frame) first")
        return np.concatenate(list(self._frames), axis=0)
