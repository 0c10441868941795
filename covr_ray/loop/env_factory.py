"""The env a COVR run's env runners create: the registered simulator plus the prior client.

RLlib calls :func:`make_run_env` inside each env runner (a Ray actor) with the run's ``env_config``:
``{"env": <covr_envs env_config: EnvSection fields + seed>, "covr": <the run's config dict>, "run_id": str,
"covr_df": <D_f recorder settings>}``. The simulator comes from :mod:`covr_envs` (its own seed per runner
and vector index); when the prior is enabled, :class:`~covr_ray.prior.client.PriorWrapper` queries the
run's prior service every ``prior.prior_every`` steps without blocking and writes the prior infos that
the learner connector turns into the ``prior_action`` / ``prior_mask`` columns.

A user's env module (``env.name = "gym:<module>:<id>"`` or ``env.imports``) is imported here, in the env
runner's process, by :func:`covr_envs.rllib.create_env`; the driver resolves the spec (importing it there)
before it starts any actor, so a module the driver cannot import fails the run before anything starts, and
one only the workers lack fails in the runner with an ``EnvError`` that names it.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym

RUN_ENV_ID = "covr_run_env"


def make_run_env(env_config: Mapping[str, Any]) -> gym.Env:
    """RLlib env creator of a COVR run (see the module docstring for ``env_config``).

    Raises:
        EnvError: the env cannot be made in this env runner, e.g. its module (``env.imports`` or
            ``gym:<module>:<id>``) is not on this process's Python path.
    """
    from ray.rllib.env.env_context import EnvContext

    from covr_envs.rllib import create_env
    from covr_ray.config import config_from_dict
    from covr_ray.prior.client import PriorWrapper

    worker = int(getattr(env_config, "worker_index", 0) or 0)
    vector = int(getattr(env_config, "vector_index", 0) or 0)
    env = create_env(EnvContext(dict(env_config["env"]), worker_index=worker, vector_index=vector))
    cfg = config_from_dict(dict(env_config["covr"]))
    if not cfg.prior.enabled:
        return env
    action_dim = int(env.action_space.shape[0])
    return PriorWrapper.from_config(env, cfg, run_id=str(env_config["run_id"]), worker_index=worker,
                                    action_dim=action_dim)


def register_run_env() -> str:
    """Register :func:`make_run_env` with Ray Tune's env registry (idempotent); returns its id."""
    from ray.tune.registry import register_env

    register_env(RUN_ENV_ID, make_run_env)
    return RUN_ENV_ID
