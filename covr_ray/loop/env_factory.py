"""What a COVR run adds to its env inside each env runner: the prior client.

The run's env is created by the one registered creator, :func:`covr_envs.rllib.create_env` (seeds per runner
and vector index, a user's env module imported in the runner's own process); when its ``env_config`` carries
a run context (:data:`covr_envs.rllib.RUN_CONTEXT_KEY`: ``{"covr": <the run's config dict>, "run_id": str,
"covr_df": <D_f recorder settings>}``), the creator hands the env to :func:`wrap_for_run`. With the prior
enabled, :class:`~covr_ray.prior.client.PriorWrapper` queries the run's prior service every
``prior.prior_every`` steps without blocking and writes the prior infos the replay turns into the
``prior_action`` / ``prior_mask`` columns.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym


def wrap_for_run(env: gym.Env, run_context: Mapping[str, Any], worker_index: int) -> gym.Env:
    """``env`` wrapped for the run described by ``run_context`` (see the module docstring)."""
    from covr_ray.config import config_from_dict
    from covr_ray.prior.client import PriorWrapper

    cfg = config_from_dict(dict(run_context["covr"]))
    if not cfg.prior.enabled:
        return env
    return PriorWrapper.from_config(env, cfg, run_id=str(run_context["run_id"]), worker_index=int(worker_index),
                                    action_dim=int(env.action_space.shape[0]))
