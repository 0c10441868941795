"""DeepMind Control Suite from pixels: the nine tasks of the paper.

Standard pixel-RL settings (PlaNet / SAC-AE / CURL / RAD / DrQ): 84x84 RGB from camera 0 (the tracking
side camera of every domain used here), 3 stacked frames, action repeat 8 for cartpole, 2 for finger and
walker, 4 for the others. An episode is 1000 physics steps, so ``1000 / action_repeat`` agent steps, and
every ``info["env_steps"]`` counts the physics steps taken: training budgets ("100K steps") are in env steps.

Rendering uses MuJoCo's EGL backend (``MUJOCO_GL=egl``, Mesa on CPU machines); it is set here before
dm_control is imported unless the caller chose another backend.
"""

from __future__ import annotations

import os
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np

from covr_envs.registry import EnvSpec, register_env
from covr_envs.wrappers import check_action, frame_space, unit_action_space
from covr_ray.errors import ConfigError, EnvError

#: (domain, task) -> (action repeat, action dim, prompt, action description)
_TASKS: dict[tuple[str, str], tuple[int, int, str, str]] = {
    ("cartpole", "swingup"): (
        8, 1,
        "Side view of a cart on a horizontal rail with a pole hinged on top. The pole starts hanging down. "
        "Swing it up and balance it upright, with the cart near the centre of the rail.",
        "1 value in [-1, 1]: horizontal force on the cart; negative pushes it left, positive pushes it right.",
    ),
    ("reacher", "easy"): (
        4, 2,
        "Top view of a two-link planar arm and a red target. Move the arm's fingertip onto the target and "
        "keep it there.",
        "2 values in [-1, 1]: torque at the shoulder joint, then torque at the elbow joint; positive turns "
        "counter-clockwise.",
    ),
    ("cheetah", "run"): (
        4, 6,
        "Side view of a planar two-legged cheetah robot on flat ground. Make it run forward (to the right) "
        "as fast as possible.",
        "6 values in [-1, 1]: joint torques of the back thigh, back shin, back foot, front thigh, front "
        "shin, front foot.",
    ),
    ("walker", "walk"): (
        2, 6,
        "Side view of a planar two-legged walker robot. Keep the torso upright and walk forward (to the "
        "right) at a steady walking speed.",
        "6 values in [-1, 1]: joint torques of the right hip, right knee, right ankle, left hip, left knee, "
        "left ankle.",
    ),
    ("finger", "spin"): (
        2, 2,
        "Side view of a two-joint planar finger and a free-spinning body on a hinge. Use the finger to flick "
        "the body so that it keeps spinning fast.",
        "2 values in [-1, 1]: torque of the proximal (base) joint, then of the distal (tip) joint.",
    ),
    ("ball_in_cup", "catch"): (
        4, 2,
        "Side view of a cup moving in a vertical plane, with a ball attached to it by a string. Swing the "
        "ball up and catch it in the cup.",
        "2 values in [-1, 1]: horizontal force on the cup (positive = right), then vertical force "
        "(positive = up).",
    ),
    ("hopper", "hop"): (
        4, 4,
        "Side view of a one-legged planar hopper robot. Hop forward (to the right) as fast as possible "
        "without falling.",
        "4 values in [-1, 1]: joint torques of the waist, hip, knee, ankle.",
    ),
    ("walker", "run"): (
        2, 6,
        "Side view of a planar two-legged walker robot. Keep the torso upright and run forward (to the "
        "right) as fast as possible.",
        "6 values in [-1, 1]: joint torques of the right hip, right knee, right ankle, left hip, left knee, "
        "left ankle.",
    ),
    ("pendulum", "swingup"): (
        4, 1,
        "Side view of a pendulum on a hinge. It starts pointing down. Swing it up and hold it upright; "
        "the motor is too weak to lift it in one push.",
        "1 value in [-1, 1]: torque at the hinge; positive turns counter-clockwise.",
    ),
}

#: camera of each domain in the standard pixel benchmark (quadruped would be 2; all of ours use 0).
_CAMERA = {"quadruped": 2}


def _register() -> None:
    for (domain, task), (repeat, dim, prompt, actions) in _TASKS.items():
        register_env(EnvSpec(
            name=f"dmc:{domain}-{task}", family="dmc", prompt=prompt, action_description=actions,
            codec="numeric", action_dim=dim, default_action_repeat=repeat,
            factory="covr_envs.dmc:make_core", kwargs={"domain": domain, "task": task},
        ))


class DMCPixelEnv(gym.Env):
    """One dm_control task as a Gymnasium env whose observation is the rendered frame.

    obs: (S, S, 3) uint8 from ``camera_id``; action: float32 (A,) in [-1, 1], mapped affinely to the
    task's actuator bounds; reward: sum over the action repeat; ``terminated`` when dm_control ends the
    episode with discount 0, ``truncated`` at its time limit.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, domain: str, task: str, seed: int, image_size: int = 84, action_repeat: int = 4,
                 camera_id: Optional[int] = None, name: Optional[str] = None) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        from dm_control import suite

        if (domain, task) not in suite.ALL_TASKS:
            raise EnvError(f"dm_control has no task {domain}-{task}")
        self.name = name or f"dmc:{domain}-{task}"
        self._env = suite.load(domain, task, task_kwargs={"random": int(seed)})
        self._size = int(image_size)
        self._repeat = int(action_repeat)
        self._camera = _CAMERA.get(domain, 0) if camera_id is None else int(camera_id)
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, dtype=np.float64)
        self._high = np.asarray(spec.maximum, dtype=np.float64)
        self.action_space = unit_action_space(int(np.prod(spec.shape)))
        self.observation_space = frame_space(self._size)
        self.render_mode = "rgb_array"
        self._frame: Optional[np.ndarray] = None

    def _render(self) -> np.ndarray:
        frame = self._env.physics.render(height=self._size, width=self._size, camera_id=self._camera)
        self._frame = np.ascontiguousarray(frame, dtype=np.uint8)
        return self._frame

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            # dm_control draws initial states from the task's RandomState; replace it to reseed.
            self._env.task._random = np.random.RandomState(int(seed))  # noqa: SLF001 - no public setter
        self._env.reset()
        return self._render(), {"env_steps": 0}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        a = check_action(action, self.action_space.shape[0], self.name)
        scaled = self._low + (a.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)
        reward, taken, terminated, truncated = 0.0, 0, False, False
        for _ in range(self._repeat):
            ts = self._env.step(scaled)
            reward += float(ts.reward or 0.0)
            taken += 1
            if ts.last():
                terminated = ts.discount is not None and float(ts.discount) == 0.0
                truncated = not terminated
                break
        return self._render(), reward, terminated, truncated, {"env_steps": taken}

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise EnvError(f"{self.name}: render() before reset()")
        return self._frame.copy()

    def close(self) -> None:
        self._env.close()


def make_core(spec: EnvSpec, seed: int, image_size: int, action_repeat: int, domain: str, task: str,
              camera_id: Optional[int] = None) -> DMCPixelEnv:
    """Factory of the ``dmc:`` specs (see :func:`covr_envs.registry.make_env`)."""
    if camera_id is not None and (isinstance(camera_id, bool) or not isinstance(camera_id, int) or camera_id < 0):
        raise ConfigError("env.kwargs.camera_id", camera_id, "a camera index >= 0 or null")
    return DMCPixelEnv(domain, task, seed, image_size=image_size, action_repeat=action_repeat,
                       camera_id=camera_id, name=spec.name)


_register()
