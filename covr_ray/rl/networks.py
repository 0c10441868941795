"""Actor, twin critic and the deployable policy on top of the shared encoder (plain torch, no RLlib).

RAD/DrQ layout: each head owns a trunk (linear -> LayerNorm -> tanh, ``feature_dim`` outputs) on the
encoder's flat conv features, then a 2-hidden-layer ReLU MLP of width ``hidden_dim``.

- :class:`Actor` outputs squashed-Gaussian parameters ``[mean, log_std]`` (RLlib's
  ``ACTION_DIST_INPUTS`` layout); ``log_std`` is squashed smoothly into ``[LOG_STD_MIN, LOG_STD_MAX]``,
  RLlib's own clamp range, so no gradient dies at the clamp. Actions are ``tanh(u)``, in [-1, 1].
- :class:`Critic` has one trunk feeding two Q MLPs (clipped double Q).
- :class:`PixelPolicy` is encoder + actor returning the deterministic action ``tanh(mean)``: what
  evaluation and export run, with no RLlib and no VLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from covr_ray.rl.encoder import PixelEncoder, init_weights

LOG_STD_MIN = -5.0
"""Lower bound of the actor's log std (RLlib clamps squashed-Gaussian log std to [-5, 2])."""
LOG_STD_MAX = 2.0
"""Upper bound of the actor's log std."""


class Trunk(nn.Module):
    """Linear -> LayerNorm -> tanh. Shapes: ``(B, in_dim)`` -> ``(B, feature_dim)`` in [-1, 1]."""

    def __init__(self, in_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two hidden ReLU layers of width ``hidden_dim``."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                         nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class Actor(nn.Module):
    """Policy head. Shapes: ``h: (B, encoder_dim)`` -> ``(B, 2 * action_dim)`` = ``[mean, log_std]``."""

    def __init__(self, encoder_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.trunk = Trunk(encoder_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, 2 * action_dim)
        self.apply(init_weights)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.policy(self.trunk(h)).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return torch.cat([mean, log_std], dim=-1)


class Critic(nn.Module):
    """Twin Q head. Shapes: ``h: (B, encoder_dim)``, ``action: (B, A)`` -> ``(q1, q2)``, each ``(B,)``."""

    def __init__(self, encoder_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = Trunk(encoder_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.apply(init_weights)

    def forward(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.trunk(h), action.to(h.dtype)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def forward_frozen(self, h: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as ``forward`` with the critic's own parameters detached: gradients flow to ``h`` and
        ``action`` (hence to the actor) but never into the critic (the actor loss must not train it)."""
        params = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, params, (h, action))


def squashed_mean(dist_inputs: torch.Tensor) -> torch.Tensor:
    """Deterministic action of a squashed Gaussian. ``(B, 2A)`` -> ``(B, A)`` in [-1, 1]."""
    mean, _ = dist_inputs.chunk(2, dim=-1)
    return torch.tanh(mean)


class PixelPolicy(nn.Module):
    """Encoder + actor: pixels in, deterministic action ``tanh(mean)`` out. The deployable policy.

    Shapes: ``obs: (B, C, H, W)`` uint8 -> ``(B, action_dim)`` float32 in [-1, 1].
    """

    def __init__(self, encoder: PixelEncoder, actor: Actor) -> None:
        super().__init__()
        self.encoder = encoder
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return squashed_mean(self.actor(self.encoder(obs)))


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the networks (stored beside exported weights)."""

    obs_shape: tuple[int, int, int]
    action_dim: int
    feature_dim: int = 50
    hidden_dim: int = 1024
    num_filters: int = 32
    num_conv_layers: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {"obs_shape": list(self.obs_shape), "action_dim": self.action_dim,
                "feature_dim": self.feature_dim, "hidden_dim": self.hidden_dim,
                "num_filters": self.num_filters, "num_conv_layers": self.num_conv_layers}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkSpec":
        return cls(obs_shape=tuple(int(v) for v in data["obs_shape"]),  # type: ignore[arg-type]
                   action_dim=int(data["action_dim"]), feature_dim=int(data["feature_dim"]),
                   hidden_dim=int(data["hidden_dim"]), num_filters=int(data["num_filters"]),
                   num_conv_layers=int(data["num_conv_layers"]))


def build_encoder(spec: NetworkSpec) -> PixelEncoder:
    return PixelEncoder(spec.obs_shape, spec.num_filters, spec.num_conv_layers)


def build_actor(spec: NetworkSpec, encoder_dim: int) -> Actor:
    return Actor(encoder_dim, spec.action_dim, spec.feature_dim, spec.hidden_dim)


def build_critic(spec: NetworkSpec, encoder_dim: int) -> Critic:
    return Critic(encoder_dim, spec.action_dim, spec.feature_dim, spec.hidden_dim)


def build_policy(spec: NetworkSpec, state_dict: Mapping[str, torch.Tensor] | None = None) -> PixelPolicy:
    """Policy network for evaluation / export; ``state_dict`` keys ``encoder.*`` and ``actor.*``
    (as returned by :func:`covr_ray.rl.algo.policy_state_dict`)."""
    encoder = build_encoder(spec)
    policy = PixelPolicy(encoder, build_actor(spec, encoder.out_dim))
    if state_dict is not None:
        policy.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()}, strict=True)
    return policy.eval()


def initial_log_alpha(init_alpha: float) -> float:
    """log of the initial temperature (validated > 0 by the config)."""
    return math.log(init_alpha)


def count_parameters(modules: Sequence[nn.Module]) -> int:
    """Total parameters of the given modules."""
    return sum(p.numel() for m in modules for p in m.parameters())
