"""Env registry: one :class:`EnvSpec` per named env, and ``make_env`` that builds the pixel env from it.

Every env made here has the same outer contract, whatever the simulator:

- observation: ``Box(uint8, (3 * frame_stack, S, S))``, the last ``frame_stack`` RGB frames, channels first;
- action: ``Box(float32, [-1, 1]^A)``;
- ``env.render()``: the single current RGB frame ``(S, S, 3) uint8``, the image the VLM sees;
- ``info["env_steps"]``: simulator steps this agent step took (the action repeat, fewer at episode end),
  plus the family's metrics (driving: ``distance_m``, ``speed_mps``, ``collision``, ``offroad``).

Names: ``dmc:<domain>-<task>`` (the nine paper tasks), ``driving-hw`` / ``driving-gp`` (embedded highway-env
scenarios), ``carla-hw`` / ``carla-gp`` (a CARLA server), ``gym:<gymnasium id>`` (bring your own), and
``gym:<module>:<gymnasium id>`` (your own env in your own module: the module is imported first, Gymnasium's
``module:id`` convention). Modules listed in ``env.imports`` (``make_env(..., imports=[...])``) are imported
before the name is looked up, for envs that register themselves with Gymnasium when imported. Both kinds of
module are imported in every process that resolves or makes the env (the driver and each env runner), so
they must be importable there (see :data:`IMPORT_HINT`).

A spec's ``factory`` is an import path (``"covr_envs.dmc:make_core"``) so that listing specs imports no
simulator; the factory builds the *core* env (frames ``(S, S, 3) uint8`` as observations, action repeat done
inside), and :func:`make_env` wraps it (time limit, frame stack, seeding).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import keyword
import os
import socket
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Optional, Sequence

import gymnasium as gym

from covr_ray.errors import ConfigError, EnvError
from covr_ray.log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.config import EnvSection

log = get_logger(__name__)

Family = Literal["dmc", "driving", "carla", "gym"]
Codec = Literal["driving", "numeric"]

#: keys of ``make_env`` overrides that shape the env itself; every other key goes to the simulator factory.
WRAPPER_KEYS = ("image_size", "frame_stack", "action_repeat", "max_episode_steps")
#: EnvSection fields that only the prior service reads; accepted (and ignored) by ``make_env``.
PRIOR_KEYS = ("prompt", "action_description", "codec", "name")

#: what to do when a user's env module (``gym:<module>:<id>`` or an ``env.imports`` entry) cannot be imported.
IMPORT_HINT = ("It must be importable by the driver and by every Ray env runner process: install it "
               "(pip install -e <your project>), or put its directory on PYTHONPATH; with Ray, give the workers "
               "ray.init(runtime_env={'env_vars': {'PYTHONPATH': '<dir>'}}), or ship it on a cluster with "
               "runtime_env={'py_modules': ['<dir>/<module>']} or runtime_env={'working_dir': '<dir>'}")

#: info keys every env reports on every step (and on reset).
BASE_INFO_KEYS = ("env_steps",)
#: info keys the driving families add.
DRIVING_INFO_KEYS = ("env_steps", "distance_m", "speed_mps", "collision", "offroad")


@dataclass(frozen=True)
class EnvSpec:
    """What the rest of COVR needs to know about a registered env, without building it."""

    name: str
    """Registered name, e.g. ``dmc:cartpole-swingup`` or ``driving-hw``."""
    family: Family
    """Simulator family: ``dmc``, ``driving`` (embedded highway-env), ``carla`` or ``gym``."""
    prompt: str
    """Task prompt for the VLM: what the image shows and what the agent must achieve."""
    action_description: str
    """What each action dimension means (order, sign, range [-1, 1]), told to the VLM."""
    codec: Codec
    """Action codec of the prior service: ``driving`` = [steer, throttle_brake], else ``numeric``."""
    action_dim: int
    """A: length of the action vector."""
    default_action_repeat: int
    """Standard simulator steps per agent step (DMC: cartpole 8, finger/walker 2, others 4)."""
    factory: str
    """``"module:function"`` building the core env; see :func:`make_env`."""
    default_max_episode_steps: Optional[int] = None
    """Agent steps before truncation when the config says None; None = the simulator's own limit."""
    info_keys: tuple[str, ...] = BASE_INFO_KEYS
    """Keys present in every step's (and reset's) ``info``."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Fixed keyword arguments of the factory (e.g. domain and task)."""


_REGISTRY: dict[str, EnvSpec] = {}
_FAMILY_MODULES = ("covr_envs.dmc", "covr_envs.driving", "covr_envs.driving_hazard", "covr_envs.carla_env")
_loaded = False


def register_env(spec: EnvSpec, overwrite: bool = False) -> EnvSpec:
    """Add ``spec`` to the registry (e.g. your own simulator); refuses to replace a name unless asked."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise EnvError(f"env {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.action_dim < 1:
        raise EnvError(f"env {spec.name!r}: action_dim must be >= 1, got {spec.action_dim}")
    if spec.default_action_repeat < 1:
        raise EnvError(f"env {spec.name!r}: default_action_repeat must be >= 1, got {spec.default_action_repeat}")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in _FAMILY_MODULES:  # each module registers its specs at import; none imports a simulator
            importlib.import_module(module)
        _loaded = True


def is_module_name(text: Any) -> bool:
    """True for a dotted Python module name (``my_envs``, ``my_pkg.envs``): identifiers, no keywords."""
    return (isinstance(text, str) and bool(text)
            and all(part.isidentifier() and not keyword.iskeyword(part) for part in text.split(".")))


def _this_process() -> str:
    return f"pid {os.getpid()} on host {socket.gethostname()}"


def import_user_module(module: str, named_by: str) -> ModuleType:
    """Import a user's env module in this process (the driver or an env runner).

    Args:
        module: a dotted module name.
        named_by: where the config names it, for the error, e.g. ``"env.name 'gym:my_envs:MyEnv-v0'"``.

    Raises:
        EnvError: the module is not on this process's Python path, a package it imports is missing, or it
            raised while being imported. The message names the module, ``named_by``, this process and what
            to do.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module or module.startswith(missing + "."):
            raise EnvError(f"{named_by}: module {module!r} is not importable in this process "
                           f"({_this_process()}): {exc}. {IMPORT_HINT}") from exc
        raise EnvError(f"{named_by}: module {module!r} was found, but importing it failed in this process "
                       f"({_this_process()}): {exc}. Install the package it needs wherever the driver and the "
                       "env runners run") from exc
    except Exception as exc:  # the user's own code runs at import: it may raise anything
        raise EnvError(f"{named_by}: importing module {module!r} raised {type(exc).__name__}: {exc} "
                       f"({_this_process()}); fix the module so that it imports cleanly") from exc


def import_env_modules(modules: Optional[Sequence[str]], field: str = "env.imports") -> list[ModuleType]:
    """Import the modules of ``env.imports`` (envs that register themselves with Gymnasium on import).

    Called wherever an env is resolved or made (:func:`resolve_env_spec`, :func:`load_env_spec`,
    :func:`make_env`, and so in every env runner's creator); importing a module twice is free.

    Raises:
        ConfigError: ``modules`` is not a list, or an entry is not a dotted module name (names ``field``).
        EnvError: an entry could not be imported (see :func:`import_user_module`).
    """
    if modules is None:
        return []
    if isinstance(modules, str) or not isinstance(modules, (list, tuple)):
        raise ConfigError(field, modules, "a list of dotted module names, e.g. [my_envs]")
    for module in modules:
        if not is_module_name(module):
            raise ConfigError(field, module, "dotted module names, e.g. my_envs or my_pkg.envs",
                              hint="List the module that registers your env with Gymnasium, not a file path")
    return [import_user_module(module, f"{field} entry {module!r}") for module in modules]


def list_envs(family: Optional[str] = None) -> list[str]:
    """Names of the registered envs (``gym:<id>`` names are open-ended and not listed)."""
    _load_families()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_env_spec(name: str) -> EnvSpec:
    """The spec of a registered env, or of ``gym:<id>`` / ``gym:<module>:<id>`` (built by creating that env
    once; the module, if named, is imported first).

    Raises:
        EnvError: ``name`` is neither registered nor ``gym:<id>`` of an installed Gymnasium env, or its
            module cannot be imported in this process.
    """
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if isinstance(name, str) and name.startswith("gym:"):
        from covr_envs.gym_env import gym_spec

        return gym_spec(name)
    raise EnvError(f"unknown env {name!r}; registered: {', '.join(list_envs())}, or gym:<gymnasium id> "
                   "(gym:<module>:<gymnasium id> for your own module) for any Gymnasium env with a Box action "
                   "space and image observations or rgb_array rendering")


def load_env_spec(env_cfg: "EnvSection") -> EnvSpec:
    """The env's own spec after importing ``env.imports``: what a driver checks before it starts anything.

    Unlike :func:`resolve_env_spec` it needs no prompt (a run without the prior has none to give).

    Raises:
        ConfigError: a bad ``env.imports`` entry.
        EnvError: unknown env, or a module (``env.imports`` or ``gym:<module>:<id>``) that does not import.
    """
    import_env_modules(env_cfg.imports)
    return get_env_spec(env_cfg.name)


def resolve_env_spec(env_cfg: "EnvSection") -> EnvSpec:
    """The spec with the config's ``prompt`` / ``action_description`` / ``codec`` applied.

    This is what the prior service should read. A ``gym:`` env has no prompt of its own: the config must
    give one (``env.prompt`` and ``env.action_description``). The modules of ``env.imports`` (and of a
    ``gym:<module>:<id>`` name) are imported first, in this process: a driver calling this before it starts
    any actor reports a module it cannot import before anything runs.

    Raises:
        ConfigError: a ``gym:`` env without ``env.prompt`` or ``env.action_description``; a bad
            ``env.imports`` entry.
        EnvError: unknown env, or a module that does not import (see :func:`load_env_spec`).
    """
    spec = load_env_spec(env_cfg)
    if spec.family == "gym":
        for key in ("prompt", "action_description"):
            if not (getattr(env_cfg, key) or "").strip():
                raise ConfigError(f"env.{key}", getattr(env_cfg, key),
                                  "a non-empty string for gym: envs",
                                  hint=f"{env_cfg.name} has no built-in {key}; describe the task and each of "
                                       f"its {spec.action_dim} action dimensions in the config")
    changes = {k: getattr(env_cfg, k) for k in ("prompt", "action_description", "codec")
               if getattr(env_cfg, k) is not None}
    return dataclasses.replace(spec, **changes) if changes else spec


def _factory(spec: EnvSpec) -> Callable[..., gym.Env]:
    module, _, func = spec.factory.partition(":")
    return getattr(importlib.import_module(module), func)


def _check_sim_kwargs(spec: EnvSpec, factory: Callable[..., Any], sim_kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = {"spec", "seed", "image_size", "action_repeat", *spec.kwargs}
    allowed = sorted(set(params) - fixed)
    for key, value in sim_kwargs.items():
        if key not in allowed:
            raise ConfigError(f"env.kwargs.{key}", value,
                              f"a simulator argument of {spec.name}: " + (", ".join(allowed) or "none"))


def _check_int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"env.{key}", value, f"an integer in {lo}..{hi}")
    return value


def make_env(name: str, seed: int, **overrides: Any) -> gym.Env:
    """Build env ``name`` seeded with ``seed``.

    Args:
        name: a registered name (see :func:`list_envs`), ``gym:<id>`` or ``gym:<module>:<id>`` (the module is
            imported in this process first).
        seed: 0 <= seed < 2**32. The first ``reset()`` without a seed uses it; same seed, same episodes.
        overrides: ``image_size`` (default 84), ``frame_stack`` (3), ``action_repeat`` (the spec's standard
            one), ``max_episode_steps`` (the spec's default), ``kwargs`` (a dict of simulator arguments),
            ``carla`` (CarlaSection or dict, carla envs), ``imports`` (modules imported before ``name`` is
            looked up, as ``env.imports``). Any other key is a simulator argument, checked by the family's
            factory. ``prompt`` / ``action_description`` / ``codec`` are accepted and ignored.

    Returns:
        A Gymnasium env: obs ``(3 * frame_stack, S, S) uint8``, actions ``[-1, 1]^A float32``.

    Raises:
        EnvError: unknown name, a module (``imports`` or ``gym:<module>:<id>``) that does not import in this
            process, or the simulator failed to start.
        ConfigError: a bad override value, a bad ``imports`` entry or an unknown simulator argument.
        DependencyMissingError: the family's simulator package is not installed (``carla``).
    """
    from covr_envs.wrappers import FrameStackCHW, SeededReset

    import_env_modules(overrides.pop("imports", None))
    spec = get_env_spec(name)
    _check_int("seed", seed, 0, 2**32 - 1)
    sim_kwargs = dict(overrides.pop("kwargs", None) or {})
    for key in PRIOR_KEYS:
        overrides.pop(key, None)
    shape = {k: v for k in WRAPPER_KEYS if (v := overrides.pop(k, None)) is not None}
    sim_kwargs.update(overrides)
    if spec.family != "carla":
        sim_kwargs.pop("carla", None)
    image_size = _check_int("image_size", shape.get("image_size", 84), 16, 512)
    frame_stack = _check_int("frame_stack", shape.get("frame_stack", 3), 1, 16)
    action_repeat = _check_int("action_repeat", shape.get("action_repeat", spec.default_action_repeat), 1, 64)
    max_steps = shape.get("max_episode_steps", spec.default_max_episode_steps)
    if max_steps is not None:
        _check_int("max_episode_steps", max_steps, 1, 10**9)

    factory = _factory(spec)
    _check_sim_kwargs(spec, factory, sim_kwargs)
    core = factory(spec=spec, seed=seed, image_size=image_size, action_repeat=action_repeat,
                   **dict(spec.kwargs), **sim_kwargs)
    env: gym.Env = core
    if max_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps=max_steps)
    env = FrameStackCHW(env, frame_stack)
    return SeededReset(env, seed)


def make_env_from_config(env_cfg: "EnvSection", seed: int) -> gym.Env:
    """:func:`make_env` from an ``EnvSection`` section (``env.kwargs`` become simulator arguments; the modules of
    ``env.imports`` are imported first, in this process)."""
    spec = load_env_spec(env_cfg)
    if env_cfg.action_repeat != spec.default_action_repeat:
        log.info("env %s: action_repeat %d (its standard is %d)", env_cfg.name, env_cfg.action_repeat,
                 spec.default_action_repeat)
    extra: dict[str, Any] = {}
    if spec.family == "carla":
        extra["carla"] = env_cfg.carla
    return make_env(env_cfg.name, seed, image_size=env_cfg.image_size, frame_stack=env_cfg.frame_stack,
                    action_repeat=env_cfg.action_repeat, max_episode_steps=env_cfg.max_episode_steps,
                    kwargs=dict(env_cfg.kwargs), imports=list(env_cfg.imports), **extra)
