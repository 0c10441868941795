"""A reference trainer in one process, no Ray: the learner's networks and update on one env.

This is not how COVR runs (``covr train`` runs RLlib on Ray); it is a check that the pixel SAC/RAD
networks and update of :mod:`covr_ray.rl.plain` (op for op the RLlib learner's, see that module) learn,
on machines that have a GPU but no Ray, and a curve to compare a Ray run with. No VLM prior (lambda 0).

How to run::

    python -m covr_ray.rl.plain_train --preset dmc-cartpole-swingup --env-steps 100000 --device cuda \\
        --out runs/plain-cartpole.json

Prints one JSON line per evaluation (``env_steps``, ``return_mean``, ``return_std``, ``updates_per_s``) and
writes the whole curve to ``--out``. Expect (RAD papers): cartpole-swingup well above a random policy's
~25 within 100K env steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from covr_ray.config import CovrConfig, load_config
from covr_ray.io import atomic_write_text


def build_trainer(cfg: CovrConfig, obs_shape: tuple[int, int, int], action_dim: int, device: str) -> tuple[Any, Any]:
    """(:class:`~covr_ray.rl.plain.PlainPixelSAC`, its NetworkSpec) with the preset's networks and
    hyperparameters."""
    from covr_ray.rl.networks import NetworkSpec, build_actor, build_critic, build_encoder, initial_log_alpha
    from covr_ray.rl.plain import PlainPixelSAC

    s = cfg.sac
    spec = NetworkSpec(obs_shape=obs_shape, action_dim=action_dim, feature_dim=s.feature_dim,
                       hidden_dim=s.hidden_dim, num_filters=s.num_filters)
    encoder = build_encoder(spec)
    return PlainPixelSAC(encoder, build_actor(spec, encoder.out_dim), build_critic(spec, encoder.out_dim),
                         initial_log_alpha(s.init_alpha), gamma=s.gamma, actor_lr=s.actor_lr,
                         critic_lr=s.critic_lr, alpha_lr=s.alpha_lr, alpha_beta=s.alpha_beta, tau=s.tau,
                         critic_loss=s.critic_loss,
                         encoder_tau=s.encoder_tau, target_update_every=s.target_update_every,
                         augmentation_pad=s.augmentation_pad if s.base == "rad" else 0, device=device), spec


@torch.no_grad()
def explore_action(trainer: Any, obs: np.ndarray) -> np.ndarray:
    """A sample of the squashed Gaussian policy for one ``obs: (C, H, W)`` uint8 -> ``(A,)`` in [-1, 1]."""
    from covr_ray.rl.plain import squashed_gaussian

    x = torch.as_tensor(obs, device=trainer.device).unsqueeze(0)
    action, _logp = squashed_gaussian(trainer.actor(trainer.encoder(x)), reparameterise=False)
    return action[0].float().cpu().numpy()


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def train(cfg: CovrConfig, env_steps: int, device: str, eval_every: int, eval_episodes: int,
          out: Optional[Path] = None) -> list[dict[str, Any]]:
    """Train for ``env_steps`` (action repeat counted); evaluate every ``eval_every``; returns the curve."""
    from covr_envs.registry import make_env_from_config
    from covr_ray.evaluate import evaluate_policy
    from covr_ray.rl.networks import PixelPolicy
    from covr_ray.rl.replay import PixelReplay

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = make_env_from_config(cfg.env, cfg.seed)
    obs_shape = tuple(env.observation_space.shape)
    action_dim = int(env.action_space.shape[0])
    trainer, _spec = build_trainer(cfg, obs_shape, action_dim, device)
    replay = PixelReplay(cfg.sac.buffer_capacity, obs_shape, action_dim, frame_stack=cfg.env.frame_stack,
                         seed=cfg.seed)
    repeat = cfg.env.action_repeat
    agent_steps = math.ceil(env_steps / repeat)
    curve: list[dict[str, Any]] = []
    obs, _info = env.reset(seed=cfg.seed)
    episode, next_eval, updates, update_s = 0, eval_every, 0, 0.0
    for t in range(agent_steps):
        if t * repeat < cfg.sac.learning_starts:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        else:
            action = explore_action(trainer, obs)
        next_obs, reward, terminated, truncated, _info = env.step(action)
        replay.add_chunk(episode, np.stack([obs, next_obs]), action[None], np.array([reward]), terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            replay.end_episode(episode)
            episode += 1
            obs, _info = env.reset()
        if t * repeat >= cfg.sac.learning_starts:
            t0 = time.perf_counter()
            for _ in range(max(1, round(cfg.sac.updates_per_step))):
                trainer.update(_to_device(replay.sample(cfg.sac.batch_size), trainer.device))
                updates += 1
            update_s += time.perf_counter() - t0
        done_steps = (t + 1) * repeat
        if done_steps >= next_eval or t == agent_steps - 1:
            next_eval += eval_every
            policy = PixelPolicy(trainer.encoder, trainer.actor).eval()
            result = evaluate_policy(policy.cpu() if device != "cpu" else policy, cfg.env, eval_episodes,
                                     seed=cfg.seed + 100_000 + done_steps)
            policy.to(trainer.device)
            point = {"env_steps": done_steps, "return_mean": result["return_mean"],
                     "return_std": result["return_std"], "updates": updates,
                     "updates_per_s": updates / update_s if update_s else 0.0}
            curve.append(point)
            print(json.dumps(point), flush=True)
            if out is not None:
                atomic_write_text(out, json.dumps({"preset": cfg.preset, "device": device, "curve": curve}, indent=1))
    return curve


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dmc-cartpole-swingup")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env-steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    train(cfg, args.env_steps, args.device, args.eval_every, args.eval_episodes, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
