"""A reference trainer in one process, no Ray: the learner's networks and update on one env.

This is not how COVR runs (``covr train`` runs RLlib on Ray); it is a check that the pixel SAC/RAD
networks and update of :mod:`covr_ray.rl.plain` (op for op the RLlib learner's, see that module) learn,
on machines that have a GPU but no Ray, and a curve to compare a Ray run with. No VLM prior (lambda 0).
:class:`PlainLoop` (one agent step and the updates it owes) is also the single-process reference of
``covr bench throughput``. The warm-up counts agent steps (``sac.learning_starts``, as RLlib counts them).

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


class PlainLoop:
    """One env, one compact replay and one :class:`~covr_ray.rl.plain.PlainPixelSAC` in this process: the
    single-process reference of ``covr train``'s sampling + update loop (no Ray, no RLlib).

    What it shares with ``covr train`` (prior off): the run's env (:func:`make_env_from_config`: action
    repeat, frame stack, image size), uniform random actions for the first ``sac.learning_starts`` agent
    steps, then samples of the squashed-Gaussian policy; the compact replay (:class:`PixelReplay`, uniform
    1-step transitions); the networks, augmentation and update (op for op the RLlib learner's); the
    training ratio: once ``sac.learning_starts`` agent steps are collected, ``sac.updates_per_step``
    updates per agent step (fractional ratios accumulate). :meth:`step` is one agent step and the updates
    it owes.
    """

    def __init__(self, cfg: CovrConfig, device: str = "cpu") -> None:
        from covr_envs.registry import make_env_from_config
        from covr_ray.rl.replay import PixelReplay

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.env = make_env_from_config(cfg.env, cfg.seed)
        obs_shape = tuple(self.env.observation_space.shape)
        self.action_dim = int(self.env.action_space.shape[0])
        self.trainer, self.spec = build_trainer(cfg, obs_shape, self.action_dim, device)  # type: ignore[arg-type]
        self.replay = PixelReplay(cfg.sac.buffer_capacity, obs_shape, self.action_dim,
                                  frame_stack=cfg.env.frame_stack, seed=cfg.seed)
        self.obs, _info = self.env.reset(seed=cfg.seed)
        self.episode = 0
        self.agent_steps = 0
        self.updates = 0
        self.update_s = 0.0

    def step(self) -> None:
        """One agent step (random during the warm-up, the policy's sample after), stored; then the updates
        owed by the training ratio."""
        s = self.cfg.sac
        warm = self.agent_steps < s.learning_starts
        if warm:
            action = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        else:
            action = explore_action(self.trainer, self.obs)
        next_obs, reward, terminated, truncated, _info = self.env.step(action)
        self.replay.add_chunk(self.episode, np.stack([self.obs, next_obs]), action[None], np.array([reward]),
                              terminated, truncated)
        self.obs = next_obs
        if terminated or truncated:
            self.replay.end_episode(self.episode)
            self.episode += 1
            self.obs, _info = self.env.reset()
        self.agent_steps += 1
        # RLlib starts updating once its sampled-step count reaches learning_starts: the same count here.
        owed = math.floor(s.updates_per_step * max(0, self.agent_steps - s.learning_starts) + 1e-9)
        if self.agent_steps >= s.learning_starts and len(self.replay):
            t0 = time.perf_counter()
            while self.updates < owed:
                batch = self.replay.sample(s.batch_size, reuse_buffers=True)  # consumed before the next
                self.trainer.update(_to_device(batch, self.trainer.device))
                self.updates += 1
            self.update_s += time.perf_counter() - t0


def train(cfg: CovrConfig, env_steps: int, device: str, eval_every: int, eval_episodes: int,
          out: Optional[Path] = None) -> list[dict[str, Any]]:
    """Train for ``env_steps`` (action repeat counted); evaluate every ``eval_every``; returns the curve."""
    from covr_ray.evaluate import evaluate_policy
    from covr_ray.rl.networks import PixelPolicy

    loop = PlainLoop(cfg, device)
    trainer = loop.trainer
    repeat = cfg.env.action_repeat
    agent_steps = math.ceil(env_steps / repeat)
    curve: list[dict[str, Any]] = []
    next_eval = eval_every
    for t in range(agent_steps):
        loop.step()
        done_steps = (t + 1) * repeat
        if done_steps >= next_eval or t == agent_steps - 1:
            next_eval += eval_every
            policy = PixelPolicy(trainer.encoder, trainer.actor).eval()
            result = evaluate_policy(policy.cpu() if device != "cpu" else policy, cfg.env, eval_episodes,
                                     seed=cfg.seed + 100_000 + done_steps)
            policy.to(trainer.device)
            point = {"env_steps": done_steps, "return_mean": result["return_mean"],
                     "return_std": result["return_std"], "updates": loop.updates,
                     "updates_per_s": loop.updates / loop.update_s if loop.update_s else 0.0}
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
