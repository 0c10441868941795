"""A real small policy network, and a real run directory holding one, for the eval / export / deploy tests.

``small_policy``: seeded random weights on ``IMAGE``-pixel frames, the actor's last layer scaled up so that
actions vary; ``make_run_dir``: a run directory as `covr train` leaves it (config.yaml via save_config,
policy/policy.pt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from covr_ray.config import CovrConfig, load_config, save_config
from covr_ray.policy_io import policy_meta, save_policy
from covr_ray.rl.networks import NetworkSpec, PixelPolicy, build_policy
from covr_ray.run_dir import RunDir

IMAGE = 32


def small_spec(action_dim: int = 2, image_size: int = IMAGE, frame_stack: int = 3) -> NetworkSpec:
    return NetworkSpec(obs_shape=(3 * frame_stack, image_size, image_size), action_dim=action_dim, feature_dim=16,
                       hidden_dim=32, num_filters=8)


def small_policy(seed: int = 0, **kwargs: Any) -> tuple[NetworkSpec, PixelPolicy]:
    """A small policy with seeded random weights; the actor's last layer is scaled up so actions vary."""
    torch.manual_seed(seed)
    spec = small_spec(**kwargs)
    policy = build_policy(spec)
    with torch.no_grad():
        policy.actor.policy[-1].weight.mul_(20.0)
    return spec, policy


def make_run_dir(root: Path, preset: str = "driving-hw", env_steps: int = 123, seed: int = 0,
                 overrides: Optional[list[str]] = None, policy_seed: int = 0) -> tuple[Path, CovrConfig, PixelPolicy]:
    """A run directory as `covr train` leaves it: config.yaml and policy/policy.pt (small network)."""
    from covr_envs import get_env_spec

    cfg = load_config(preset, [f"env.image_size={IMAGE}", "env.max_episode_steps=5", f"seed={seed}",
                               *(overrides or [])])
    run_dir = root / f"{preset}-{seed}"
    run = RunDir(run_dir)
    save_config(cfg, run.config_path)
    action_dim = get_env_spec(cfg.env.name).action_dim
    spec, policy = small_policy(policy_seed, action_dim=action_dim, frame_stack=cfg.env.frame_stack)
    save_policy(run.policy, spec, policy.state_dict(), policy_meta(cfg, env_steps, action_dim))
    return run_dir, cfg, policy
