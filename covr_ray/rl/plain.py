"""The same pixel SAC (+ COVR) update in plain PyTorch: no RLlib, same networks, same math.

Used by ``covr bench learner`` to measure RLlib's overhead (``rllib_over_plain``) and by the tests as an
independent reference of the learner's update. It mirrors, op for op, what
:class:`~covr_ray.rl.rl_module.PixelSACModule` + :class:`~covr_ray.rl.learner.CovrSACLearner` do:

- one forward pass (random shift of ``obs`` and ``next_obs`` for ``rad``; critic on the taken actions;
  the policy's next action scored by the target critic; the reparameterised action scored by the
  critic with its parameters detached, on detached encoder features);
- critic loss = L(Q1, y) + L(Q2, y), ``y = r + gamma (1 - done) (min Q'(s', a') - alpha log pi(a'|s'))``,
  L = squared error (``critic_loss="mse"``, default) or Huber with delta 1 (``"huber"``);
- actor loss = ``mean(alpha log pi - min Q) + lambda * prior term``; temperature loss
  ``-mean(log_alpha (log pi + target_entropy))``;
- each loss is back-propagated into its own parameter group, then the three Adam optimizers step;
  targets are Polyak-averaged every ``target_update_every`` updates (``encoder_tau`` / ``tau``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from covr_ray.errors import LearnerError
from covr_ray.rl.augment import RandomShift
from covr_ray.rl.optim import adam
from covr_ray.rl.regulariser import check_prior_gate, guided_term
from covr_ray.rl.networks import LOG_STD_MIN, Actor, Critic
from covr_ray.rl.encoder import PixelEncoder


def squashed_gaussian(dist_inputs: torch.Tensor, reparameterise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``a = tanh(u)``, ``u ~ N(mean, std)``, and its log-density (same formula as RLlib's).

    Shapes: ``dist_inputs: (B, 2A)`` -> ``(action (B, A), logp (B,))``.
    """
    mean, log_std = dist_inputs.chunk(2, dim=-1)
    log_std = log_std.clamp(LOG_STD_MIN, 2.0)
    normal = torch.distributions.Normal(mean, log_std.exp(), validate_args=False)
    u = normal.rsample() if reparameterise else normal.sample()
    logp = normal.log_prob(u).sum(-1) - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.clamp(((torch.tanh(u) + 1.0) / 2.0) * 2.0 - 1.0, -1.0, 1.0), logp


class PlainPixelSAC:
    """Plain-PyTorch pixel SAC trainer over given networks (copied, so the originals stay untouched)."""

    def __init__(self, encoder: PixelEncoder, actor: Actor, critic: Critic, log_alpha: float, *, gamma: float,
                 actor_lr: float, critic_lr: float, alpha_lr: float, alpha_beta: float, tau: float,
                 encoder_tau: float, target_update_every: int, augmentation_pad: int, prior_weight: float = 0.0,
                 prior_action_source: str = "mean", critic_loss: str = "mse", prior_gate: str = "none",
                 device: str | torch.device = "cpu") -> None:
        if critic_loss not in ("mse", "huber"):
            raise LearnerError(f"critic_loss must be 'mse' or 'huber', got {critic_loss!r}")
        self.prior_gate = check_prior_gate(prior_gate)
        self.critic_loss = critic_loss
        self.device = torch.device(device)
        self.encoder = copy.deepcopy(encoder).to(self.device)
        self.actor = copy.deepcopy(actor).to(self.device)
        self.critic = copy.deepcopy(critic).to(self.device)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # The temperature takes the networks' dtype (float32 as built; float64 when the tests compare
        # against the RLlib learner in float64).
        dtype = next(self.encoder.parameters()).dtype
        self.log_alpha = nn.Parameter(torch.tensor([log_alpha], dtype=dtype, device=self.device))
        self.augment = RandomShift(augmentation_pad) if augmentation_pad > 0 else None
        self.gamma, self.tau, self.encoder_tau = gamma, tau, encoder_tau
        self.target_update_every, self.prior_weight = target_update_every, prior_weight
        self.prior_action_source = prior_action_source
        self.target_entropy = -float(actor.action_dim)
        self.critic_opt = adam(list(self.encoder.parameters()) + list(self.critic.parameters()), lr=critic_lr,
                               betas=(0.9, 0.999))
        self.actor_opt = adam(self.actor.parameters(), lr=actor_lr, betas=(0.9, 0.999))
        self.alpha_opt = adam([self.log_alpha], lr=alpha_lr, betas=(alpha_beta, 0.999))
        self.num_updates = 0

    @classmethod
    def from_module(cls, module: Any, **kwargs: Any) -> "PlainPixelSAC":
        """Copy the networks (and temperature) of a :class:`~covr_ray.rl.rl_module.PixelSACModule`."""
        return cls(module.encoder, module.actor, module.critic, float(module.log_alpha.detach().cpu()[0]),
                   augmentation_pad=module.augment.pad if module.augment is not None else 0, **kwargs)

    def losses(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Critic, actor and temperature losses of one batch (graphs kept for backward).

        Batch: ``obs``/``next_obs: (B, C, H, W)`` uint8, ``actions: (B, A)``, ``rewards: (B,)``,
        ``terminateds: (B,)``, ``prior_action: (B, A)``, ``prior_mask: (B,)``.
        """
        obs, next_obs = batch["obs"], batch["next_obs"]
        if self.augment is not None:
            obs, next_obs = self.augment(obs), self.augment(next_obs)
        alpha = self.log_alpha.exp()
        h = self.encoder(obs)
        q1, q2 = self.critic(h, batch["actions"])
        with torch.no_grad():
            next_action, next_logp = squashed_gaussian(self.actor(self.encoder(next_obs)), reparameterise=False)
            q_next = torch.min(*self.target_critic(self.target_encoder(next_obs), next_action))
            discount = torch.full_like(batch["rewards"], self.gamma)
            target = batch["rewards"] + discount * ((1.0 - batch["terminateds"].float()) * (
                q_next - alpha.detach() * next_logp))
        if self.critic_loss == "mse":
            critic_loss = torch.mean((q1 - target) ** 2) + torch.mean((q2 - target) ** 2)
        else:
            critic_loss = (torch.mean(F.huber_loss(q1, target, reduction="none", delta=1.0))
                           + torch.mean(F.huber_loss(q2, target, reduction="none", delta=1.0)))

        h_pi = h.detach()
        dist_inputs = self.actor(h_pi)
        action, logp = squashed_gaussian(dist_inputs, reparameterise=True)
        q_pi = torch.min(*self.critic.forward_frozen(h_pi, action))
        actor_loss = torch.mean(alpha.detach() * logp - q_pi)
        a_r = torch.tanh(dist_inputs.chunk(2, dim=-1)[0]) if self.prior_action_source == "mean" else action
        prior_loss, coverage, passed = guided_term(
            lambda a: torch.min(*self.critic(h_pi, a)), a_r, batch["prior_action"], batch["prior_mask"],
            self.prior_gate if self.prior_weight > 0 else "none")
        gate = {} if passed is None else {"gate_pass": passed}
        if self.prior_weight > 0:
            actor_loss = actor_loss + self.prior_weight * prior_loss
        alpha_loss = -torch.mean(self.log_alpha * (logp.detach() + self.target_entropy))
        return {"critic": critic_loss, "actor": actor_loss, "alpha": alpha_loss, "prior": prior_loss.detach(),
                "coverage": coverage.detach(), "entropy": -logp.detach().mean(), **gate}

    def update(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """One gradient update; returns ``plain/...`` metrics."""
        losses = self.losses(batch)
        for opt, name in ((self.critic_opt, "critic"), (self.actor_opt, "actor"), (self.alpha_opt, "alpha")):
            opt.zero_grad(set_to_none=True)
            losses[name].backward(retain_graph=name != "alpha")
        for opt in (self.critic_opt, self.actor_opt, self.alpha_opt):
            opt.step()
        self.num_updates += 1
        if self.num_updates % self.target_update_every == 0:
            self.soft_update_targets()
        return {f"plain/{k}": float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def soft_update_targets(self) -> None:
        pairs = [(self.encoder, self.target_encoder, self.encoder_tau),
                 (self.critic.trunk, self.target_critic.trunk, self.encoder_tau),
                 (self.critic.q1, self.target_critic.q1, self.tau),
                 (self.critic.q2, self.target_critic.q2, self.tau)]
        for online, target, tau in pairs:
            for p_t, p in zip(target.parameters(), online.parameters()):
                p_t.lerp_(p, tau)
