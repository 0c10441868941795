"""COVR envs inside RLlib env runners (Ray actors).

:func:`register_covr_env` registers one creator with Ray Tune's registry; RLlib's env runners call it with
``env_config`` = the ``EnvSection`` as a dict plus ``"seed"`` (see :func:`env_config_dict`). Every env gets
its own seed: ``seed + 1009 * worker_index + k``, ``k`` counting the envs this process created (the vector
index), so two runners, or two envs of one runner, never replay the same episodes.

A user's env module (``env.name = "gym:<module>:<id>"``, or ``env.imports``) is imported by the creator
itself, inside each env runner process: the driver having imported it does not make it importable there, so
it must be on the workers' Python path (installed, or ``PYTHONPATH`` / ``runtime_env`` ``py_modules`` /
``working_dir``). :func:`configure_env_runners` imports it in the driver first, so a module missing there is
reported before any env runner starts.

:func:`configure_env_runners` applies a run's ``ray`` section to an RLlib ``AlgorithmConfig``: env runners and
envs per runner (presets set these per scenario), CPUs per runner, and fault tolerance: a crashed env runner
is restarted by Ray (``restart_failed_env_runners``), and an env that raises (e.g. a CARLA server that could
not be brought back) is recreated inside its runner (``restart_failed_sub_environments``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Mapping

import gymnasium as gym

from covr_ray.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    from covr_ray.config import CovrConfig, EnvSection

ENV_ID = "covr_env"
#: key of ``env_config`` holding a COVR run's context (the run's config dict, run id, D_f recorder settings);
#: with it, :func:`create_env` also wraps the env for the run (:func:`covr_ray.loop.env_factory.wrap_for_run`:
#: the prior client).
RUN_CONTEXT_KEY = "covr_run"
#: distance between the seeds of two env runners (a prime, larger than any envs-per-runner count)
WORKER_SEED_STRIDE = 1009

_vector_counter = itertools.count()


def env_config_dict(env_cfg: "EnvSection", seed: int) -> dict[str, Any]:
    """The ``env_config`` RLlib passes to the creator: the EnvSection as a plain dict plus ``seed``."""
    import dataclasses

    out = dataclasses.asdict(env_cfg)
    out["seed"] = int(seed)
    return out


def env_seed(base_seed: int, worker_index: int, vector_index: int) -> int:
    """Seed of one env: distinct per (worker, vector index), in [0, 2**32)."""
    return (int(base_seed) + WORKER_SEED_STRIDE * int(worker_index) + int(vector_index)) % 2**32


def create_env(env_config: Mapping[str, Any]) -> gym.Env:
    """RLlib env creator: ``env_config`` is :func:`env_config_dict` output (an EnvContext inside RLlib).

    Runs in the env runner's own process: it imports ``env.imports`` and the module of a
    ``gym:<module>:<id>`` name there (through :func:`~covr_envs.registry.make_env_from_config`).

    Raises:
        ConfigError: no ``seed``, or a bad EnvSection field.
        EnvError: the env cannot be made here, e.g. its module is not on this process's Python path (the
            message names the module, the env and this process, and says how to ship the module).
    """
    from covr_envs.registry import make_env_from_config
    from covr_ray.config import EnvSection
    from covr_ray.typed_data import build_dataclass

    data = dict(env_config)
    run_context = data.pop(RUN_CONTEXT_KEY, None)
    if "seed" not in data:
        raise ConfigError("env_config.seed", None, "an integer seed (use covr_envs.rllib.env_config_dict)")
    base = data.pop("seed")
    data.pop("num_envs", None)  # added by RLlib for vectorised creation
    env_cfg = build_dataclass(EnvSection, data, "env")
    env_cfg.validate("env")
    worker = int(getattr(env_config, "worker_index", 0) or 0)
    vector = int(getattr(env_config, "vector_index", 0) or 0) + next(_vector_counter)
    env = make_env_from_config(env_cfg, env_seed(base, worker, vector))
    if run_context:
        from covr_ray.loop.env_factory import wrap_for_run

        env = wrap_for_run(env, run_context, worker)
    return env


def register_covr_env() -> str:
    """Register :func:`create_env` with Ray Tune's env registry (idempotent) and return its id."""
    from ray.tune.registry import register_env

    register_env(ENV_ID, create_env)
    return ENV_ID


def configure_env_runners(algo_config: "AlgorithmConfig", cfg: "CovrConfig", restart_delay_s: float = 60.0,
                          run_context: "Mapping[str, Any] | None" = None) -> "AlgorithmConfig":
    """Point ``algo_config`` at the run's env and apply its ``ray`` section; returns ``algo_config``.

    Args:
        algo_config: an RLlib AlgorithmConfig (e.g. the SAC config of the learner).
        cfg: the run's config; ``cfg.env`` is the env, ``cfg.seed`` its base seed, ``cfg.ray`` the counts.
        restart_delay_s: pause before a failed env runner exits to be restarted (RLlib's default is 60 s).
        run_context: a COVR run's context (``covr train``), passed to every env runner under
            :data:`RUN_CONTEXT_KEY`; None for the bare env.

    Raises:
        ConfigError: a negative ``restart_delay_s``, or a bad ``env.imports`` entry.
        EnvError: the env is unknown here or its module (``env.imports``, ``gym:<module>:<id>``) does not
            import in the driver; checked before any env runner is started.
    """
    from covr_envs.registry import load_env_spec

    load_env_spec(cfg.env)  # in the driver, before any runner starts: a missing module fails here, typed
    env_config = env_config_dict(cfg.env, cfg.seed)
    if run_context is not None:
        env_config[RUN_CONTEXT_KEY] = dict(run_context)
    algo_config.environment(env=register_covr_env(), env_config=env_config)
    return apply_ray_section(algo_config, cfg, restart_delay_s)


def apply_ray_section(algo_config: "AlgorithmConfig", cfg: "CovrConfig",
                      restart_delay_s: float = 60.0) -> "AlgorithmConfig":
    """Env runners, envs per runner, CPUs per runner and fault tolerance from ``cfg.ray`` (whatever the env).

    Raises:
        ConfigError: a negative ``restart_delay_s``.
    """
    ray_cfg = cfg.ray
    if restart_delay_s < 0:
        raise ConfigError("restart_delay_s", restart_delay_s, ">= 0 seconds")
    algo_config.env_runners(
        num_env_runners=ray_cfg.num_env_runners,
        num_envs_per_env_runner=ray_cfg.num_envs_per_env_runner,
        num_cpus_per_env_runner=ray_cfg.num_cpus_per_env_runner,
    )
    algo_config.fault_tolerance(
        restart_failed_env_runners=ray_cfg.restart_failed_env_runners,
        restart_failed_sub_environments=ray_cfg.restart_failed_env_runners,
        delay_between_env_runner_restarts_s=float(restart_delay_s),
    )
    return algo_config
