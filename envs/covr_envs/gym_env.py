"""Bring your own env: ``gym:<id>`` runs any Gymnasium env with a continuous (Box) action space.

Your own env in your own module: ``gym:<module>:<id>`` (Gymnasium's ``module:id`` convention) imports
``<module>`` first, which must register ``<id>`` with ``gymnasium.register`` when imported; or list the module
in ``env.imports`` and name the env ``gym:<id>``. The module is imported in every process that builds the env:
the driver (spec resolution) and each Ray env runner, so it must be on their Python path (installed, or
``PYTHONPATH`` / Ray ``runtime_env`` ``py_modules`` or ``working_dir``); see ``docs/envs.md``.

Pixels come from the env's own image observation when it has one (``(H, W, 3)`` or ``(H, W)``, e.g.
``gym:CarRacing-v3``), otherwise from ``render()`` in ``rgb_array`` mode (e.g. ``gym:Pendulum-v1``); set
``env.kwargs.pixels`` to ``obs`` or ``render`` to choose. Frames are resized to ``image_size``; actions in
[-1, 1] are mapped affinely to the env's bounds; the action repeat runs the env ``k`` times and takes pixels
once. Other ``env.kwargs`` go to ``gymnasium.make``. Such an env has no prompt of its own: the config names
it (``env.prompt``, ``env.action_description``), e.g.::

    covr train --preset driving-hw --set env.name=gym:CarRacing-v3 \\
        --set "env.prompt=Top-down view of a race car on a track; drive along the track as fast as possible" \\
        --set "env.action_description=3 values: steer (-1 left .. 1 right), gas, brake" \\
        --set env.codec=numeric --set env.action_repeat=4 --set env.max_episode_steps=250
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from covr_envs.registry import EnvSpec, import_user_module, is_module_name
from covr_envs.wrappers import check_action, frame_space, resize_frame, unit_action_space
from covr_ray.errors import ConfigError, EnvError

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def _gym_id(name: str) -> str:
    gym_id = name[len("gym:"):] if name.startswith("gym:") else name
    if not gym_id:
        raise EnvError(f"env name {name!r}: expected gym:<gymnasium id>, e.g. gym:CarRacing-v3")
    return gym_id


def split_gym_id(gym_id: str) -> tuple[Optional[str], str]:
    """``"my_envs:MyEnv-v0"`` -> ``("my_envs", "MyEnv-v0")``; ``"Pendulum-v1"`` -> ``(None, "Pendulum-v1")``.

    Raises:
        EnvError: more than one ``:``, an empty id, or a module part that is not a dotted module name.
    """
    if ":" not in gym_id:
        return None, gym_id
    module, _, env_id = gym_id.partition(":")
    if not is_module_name(module) or not env_id or ":" in env_id:
        raise EnvError(f"env name 'gym:{gym_id}': expected gym:<gymnasium id> or gym:<module>:<gymnasium id> "
                       "with a dotted module name that registers the id on import, e.g. gym:my_envs:MyEnv-v0")
    return module, env_id


def _ids_registered_by(module: str) -> list[str]:
    """Gymnasium ids whose entry point lives in ``module`` (or a submodule of it)."""
    ids = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point
        owner = entry.partition(":")[0] if isinstance(entry, str) else getattr(entry, "__module__", "") or ""
        if owner == module or owner.startswith(module + "."):
            ids.append(env_id)
    return sorted(ids)


def _image_obs(space: gym.Space) -> bool:
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8
            and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3, 4))))


def _pixel_source(env: gym.Env, pixels: str, gym_id: str) -> str:
    if pixels not in ("auto", "obs", "render"):
        raise ConfigError("env.kwargs.pixels", pixels, "auto, obs or render")
    has_image = _image_obs(env.observation_space)
    if pixels == "obs" and not has_image:
        raise EnvError(f"gym:{gym_id}: pixels=obs, but its observation space {env.observation_space} is not an "
                       "image (H, W, 3) uint8")
    if pixels == "auto":
        pixels = "obs" if has_image else "render"
    if pixels == "render" and "rgb_array" not in (env.metadata or {}).get("render_modes", []):
        raise EnvError(f"gym:{gym_id} has neither image observations nor rgb_array rendering; COVR learns "
                       "from pixels")
    return pixels


def _registered_id(gym_id: str) -> str:
    """The Gymnasium id to make for ``gym:<gym_id>``, after importing its module (if it names one) here."""
    module, env_id = split_gym_id(gym_id)
    if module is not None:
        import_user_module(module, f"env.name 'gym:{gym_id}'")
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        if module is not None:
            found = _ids_registered_by(module)
            raise EnvError(f"gym:{gym_id}: module {module!r} was imported, but it registers no Gymnasium env "
                           f"{env_id!r} ({exc}); ids registered from it: {', '.join(found) or 'none'}. The module "
                           f"must call gymnasium.register(id={env_id!r}, entry_point=...) when imported") from exc
        raise EnvError(f"gym:{gym_id} is not a registered Gymnasium env ({exc}). If a module of yours registers "
                       f"it, name the env gym:<module>:{gym_id} or list the module in env.imports") from exc
    return env_id


def _make_inner(gym_id: str, pixels: str, kwargs: dict[str, Any]) -> tuple[gym.Env, str]:
    env_id = _registered_id(gym_id)
    try:
        probe_mode = "rgb_array" if pixels == "render" else None
        env = gym.make(env_id, render_mode=probe_mode, **kwargs)
        if pixels == "auto" and not _image_obs(env.observation_space):
            env.close()
            env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        raise EnvError(f"gym:{gym_id} needs a package that is not installed: {exc}") from exc
    except TypeError as exc:
        raise ConfigError("env.kwargs", kwargs, f"keyword arguments gym:{gym_id} accepts", hint=str(exc)) from exc
    return env, _pixel_source(env, pixels, gym_id)


class GymPixelEnv(gym.Env):
    """A Gymnasium env seen through pixels: obs (S, S, 3) uint8, actions [-1, 1]^A float32."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, gym_id: str, image_size: int = 84, action_repeat: int = 1, pixels: str = "auto",
                 **kwargs: Any) -> None:
        """``gym_id``: a Gymnasium id, or ``<module>:<id>`` (the module is imported here first)."""
        self.name = f"gym:{gym_id}"
        self._env, self._pixels = _make_inner(gym_id, pixels, kwargs)
        space = self._env.action_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            self._env.close()
            raise EnvError(f"{self.name} has action space {space}; COVR needs a continuous 1-D Box (SAC)")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            self._env.close()
            raise EnvError(f"{self.name} has unbounded actions {space}; cannot map [-1, 1] onto them")
        self._low = space.low.astype(np.float64)
        self._high = space.high.astype(np.float64)
        self._dtype = space.dtype
        self.image_size = int(image_size)
        self.action_repeat = int(action_repeat)
        self.action_space = unit_action_space(space.shape[0])
        self.observation_space = frame_space(self.image_size)
        self.render_mode = "rgb_array"
        self._frame: Optional[np.ndarray] = None

    def _pixels_of(self, obs: Any) -> np.ndarray:
        image = obs if self._pixels == "obs" else self._env.render()
        if image is None:
            raise EnvError(f"{self.name}: render() returned None; it needs render_mode='rgb_array'")
        self._frame = resize_frame(image, self.image_size)
        return self._frame

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self._env.reset(seed=seed, options=options)
        info = dict(info)
        info["env_steps"] = 0
        return self._pixels_of(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        a = check_action(action, self.action_space.shape[0], self.name)
        scaled = (self._low + (a.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)).astype(self._dtype)
        total, taken = 0.0, 0
        obs, terminated, truncated, info = None, False, False, {}
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, info = self._env.step(scaled)
            total += float(reward)
            taken += 1
            if terminated or truncated:
                break
        info = dict(info)
        info["env_steps"] = taken
        return self._pixels_of(obs), total, bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise EnvError(f"{self.name}: render() before reset()")
        return self._frame.copy()

    def close(self) -> None:
        self._env.close()


def make_core(spec: EnvSpec, seed: int, image_size: int, action_repeat: int, **kwargs: Any) -> GymPixelEnv:
    """Factory of ``gym:`` envs (kwargs: ``pixels`` plus ``gymnasium.make`` arguments)."""
    del seed  # seeded through reset(seed=...) by SeededReset
    return GymPixelEnv(_gym_id(spec.name), image_size=image_size, action_repeat=action_repeat, **kwargs)


@functools.lru_cache(maxsize=64)
def gym_spec(name: str) -> EnvSpec:
    """Spec of ``gym:<id>`` or ``gym:<module>:<id>`` (creates the env once to read its action space; the module
    is imported in this process first)."""
    gym_id = _gym_id(name)
    env = GymPixelEnv(gym_id)
    try:
        dim = int(env.action_space.shape[0])
    finally:
        env.close()
    # no prompt of its own (the config gives it); gymnasium.make already applies the env's own TimeLimit
    return EnvSpec(name=name, family="gym", prompt="", action_description="", codec="numeric", action_dim=dim,
                   default_action_repeat=1, factory="covr_envs.gym_env:make_core")
