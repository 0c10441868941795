"""The pixel SAC RLModule: one conv encoder shared by actor and critic, the RAD/DrQ way.

Why not RLlib's default SAC module: its catalog builds separate encoders per network and, on 84x84
images, a Q encoder that flattens into a linear layer of about 3.9 B parameters. Here the networks are
the plain torch modules of :mod:`covr_ray.rl.encoder` and :mod:`covr_ray.rl.networks`:

- ``encoder`` (convs) is shared; the critic loss trains it; the actor reads its output detached.
- ``critic`` = trunk + twin Q; ``target_encoder`` / ``target_critic`` are Polyak copies.
- ``actor`` = trunk + MLP -> ``[mean, log_std]`` of a tanh-squashed Gaussian.
- ``log_alpha`` (the learned temperature) lives in the module, so module checkpoints and weight syncs
  carry it (RLlib's own SAC keeps it in the learner, outside the saved module state).
- ``augment`` = random shift for the ``rad`` base, applied in ``forward_train`` only, independently to
  ``obs`` and ``next_obs`` (RAD/DrQ); the ``sac`` base has none.
- warm-up: ``forward_exploration`` acts uniformly at random in [-1, 1] while RLlib's global count of
  sampled agent steps ``t`` (which the env runner passes, synced from the algorithm every iteration and
  restored with checkpoints) is below ``warmup_steps`` (``sac.learning_starts``), as RAD/CURL collect
  their first steps, and flags each step (:data:`covr_ray.columns.EXTRA_WARMUP`, kept in the episode's
  extra model outputs, so the D_f recorder keeps warm-up actions out of the VLM's data). It lives here
  because ``t`` reaches only the module: a connector counting its own steps lost the count in RLlib's
  connector-state merge (RLlib 2.60 merges pipeline states by position, so the warm-up never ended on
  remote env runners) and restarted with a replaced env runner or a resumed run.

``forward_train`` returns exactly the keys RLlib's SAC loss reads (``qf_preds``, ``qf_twin_preds``,
``q_target_next``, ``logp_next_resampled``, ``logp_resampled``, ``q_curr``), plus the policy's squashed
mean and reparameterised sample for COVR's regulariser (:data:`ACTION_MEAN`, :data:`ACTION_SAMPLE`).

Env runners build the module with ``inference_only=True``: encoder + actor only.

RLlib 2.60's ``RLModule.__init__`` always builds the deprecated ``RLModuleConfig`` for old subclasses, so
every process that builds any RLModule (ours is built with the keyword constructor, through
``RLModuleSpec``) logged "``RLModule(config=[RLModuleConfig object])`` has been deprecated" once. Importing
this module marks that one-time notice as given (:func:`_skip_rlmodule_config_notice`); the old call it
is about raises in 2.60 anyway.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.sac.sac_learner import QF_PREDS, QF_TARGET_NEXT, QF_TWIN_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDeterministic, TorchSquashedGaussian
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.core.learner.utils import make_target_network
from ray.util import log_once
from torch import nn

from covr_ray.columns import EXTRA_WARMUP
from covr_ray.errors import EnvError
from covr_ray.rl.augment import RandomShift
from covr_ray.rl.networks import NetworkSpec, build_actor, build_critic, build_encoder, initial_log_alpha, squashed_mean

#: forward_train key: the policy's squashed mean ``tanh(mean)`` on the (augmented) obs, ``(B, A)``.
ACTION_MEAN = "covr_action_mean"
#: forward_train key: the reparameterised action sample the SAC actor loss uses, ``(B, A)``.
ACTION_SAMPLE = "covr_action_sample"
#: ``fwd_out`` key: the actor's input features ``(B, feature_dim)`` (the encoder's output, detached), for
#: the learner's critic-gated prior (``sac.prior_gate``).
ACTOR_FEATURES = "covr_actor_features"
#: forward_train keys RLlib's continuous SAC loss reads (besides the Q predictions).
LOGP_CURR = "logp_resampled"
LOGP_NEXT = "logp_next_resampled"
Q_CURR = "q_curr"

#: ``log_once`` key of RLlib 2.60's notice on ``RLModuleConfig`` (``@Deprecated(old=...)`` on the class in
#: ``ray/rllib/core/rl_module/rl_module.py``), which ``RLModule.__init__`` itself instantiates.
RLMODULE_CONFIG_NOTICE = "RLModule(config=[RLModuleConfig object])"


def _skip_rlmodule_config_notice() -> None:
    """Use up RLlib's one-time ``RLModuleConfig`` deprecation notice in this process (see the module
    docstring): RLlib prints it only when ``log_once`` of its key is true for the first time. Called at
    import, which happens in every Ray process before it builds a :class:`PixelSACModule` (or the
    ``MultiRLModule`` around it, which would log the notice first)."""
    log_once(RLMODULE_CONFIG_NOTICE)


_skip_rlmodule_config_notice()

#: model_config keys (set by :func:`covr_ray.rl.algo.build_algorithm_config`) and their defaults.
MODEL_DEFAULTS: Dict[str, Any] = {
    "feature_dim": 50,
    "hidden_dim": 1024,
    "num_filters": 32,
    "num_conv_layers": 4,
    "augmentation_pad": 0,
    "init_alpha": 0.1,
    "warmup_steps": 0,
}


class SquashedGaussian(TorchSquashedGaussian):
    """RLlib's squashed Gaussian whose deterministic form is ``tanh(mean)``.

    RLlib 2.60's ``TorchSquashedGaussian.to_deterministic()`` returns the *pre-squash* mean, so
    ``explore=False`` rollouts would send unbounded actions to the env. This fixes that.
    """

    def to_deterministic(self) -> TorchDeterministic:
        return TorchDeterministic(loc=self._squash(self.loc))


def network_spec(observation_space: gym.Space, action_space: gym.Space, model_config: Dict[str, Any]) -> NetworkSpec:
    """Validate the spaces and return the network spec. Raises EnvError for non-image / non-Box spaces."""
    if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 3
            and observation_space.dtype == np.uint8):
        raise EnvError(f"pixel SAC needs uint8 (C, H, W) image observations; got {observation_space!r}")
    if not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1):
        raise EnvError(f"pixel SAC needs a 1-D continuous (Box) action space; got {action_space!r}")
    cfg = {**MODEL_DEFAULTS, **(model_config or {})}
    return NetworkSpec(obs_shape=tuple(int(v) for v in observation_space.shape),  # type: ignore[arg-type]
                       action_dim=int(action_space.shape[0]), feature_dim=int(cfg["feature_dim"]),
                       hidden_dim=int(cfg["hidden_dim"]), num_filters=int(cfg["num_filters"]),
                       num_conv_layers=int(cfg["num_conv_layers"]))


class PixelSACModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    """Pixel actor-critic for SAC / RAD. See the module docstring for the layout."""

    def setup(self) -> None:
        cfg = {**MODEL_DEFAULTS, **(self.model_config or {})}
        self.spec = network_spec(self.observation_space, self.action_space, cfg)
        self.encoder = build_encoder(self.spec)
        self.actor = build_actor(self.spec, self.encoder.out_dim)
        self.action_dist_cls = SquashedGaussian
        self.warmup_steps = int(cfg["warmup_steps"])
        if not self.inference_only:
            self.critic = build_critic(self.spec, self.encoder.out_dim)
            self.log_alpha = nn.Parameter(torch.tensor([initial_log_alpha(float(cfg["init_alpha"]))],
                                                       dtype=torch.float32))
            pad = int(cfg["augmentation_pad"])
            self.augment = RandomShift(pad) if pad > 0 else None

    # --- acting ------------------------------------------------------------------------------------
    def _forward(self, batch: Dict[str, Any], **kwargs: Any) -> Dict[str, Any]:
        """``obs: (B, C, H, W)`` uint8 -> ``action_dist_inputs: (B, 2A)``."""
        return {Columns.ACTION_DIST_INPUTS: self.actor(self.encoder(batch[Columns.OBS]))}

    def _forward_exploration(self, batch: Dict[str, Any], t: Any = None, **kwargs: Any) -> Dict[str, Any]:
        """Acting while training. ``t``: RLlib's global sampled agent steps; below ``warmup_steps`` the
        actions are uniform in [-1, 1] (``actions`` and their ``action_logp`` = ``-A log 2`` set here, so
        RLlib does not sample the policy). Every step gets ``EXTRA_WARMUP`` (B,) 1.0 / 0.0."""
        out = self._forward(batch, **kwargs)
        dist_inputs = out[Columns.ACTION_DIST_INPUTS]
        n, a = dist_inputs.shape[0], self.spec.action_dim
        warm = t is not None and int(t) < self.warmup_steps
        out[EXTRA_WARMUP] = torch.full((n,), float(warm), dtype=torch.float32, device=dist_inputs.device)
        if warm:
            out[Columns.ACTIONS] = torch.rand(n, a, device=dist_inputs.device) * 2.0 - 1.0
            out[Columns.ACTION_LOGP] = torch.full((n,), -a * math.log(2.0), device=dist_inputs.device)
        return out

    # --- training ----------------------------------------------------------------------------------
    def _forward_train(self, batch: Dict[str, Any], **kwargs: Any) -> Dict[str, Any]:
        """Everything SAC's loss needs, from ``obs``/``next_obs: (B, C, H, W)`` and ``actions: (B, A)``."""
        obs, next_obs = batch[Columns.OBS], batch[Columns.NEXT_OBS]
        if self.augment is not None:
            obs, next_obs = self.augment(obs), self.augment(next_obs)
        dist_cls = self.get_train_action_dist_cls()
        out: Dict[str, Any] = {}

        # Critic on the taken actions: the only path that trains the encoder.
        h = self.encoder(obs)
        out[QF_PREDS], out[QF_TWIN_PREDS] = self.critic(h, batch[Columns.ACTIONS])

        # Soft target: the current policy acts on next_obs, the target critic scores it.
        with torch.no_grad():
            next_dist = dist_cls.from_logits(self.actor(self.encoder(next_obs)))
            next_action, out[LOGP_NEXT] = next_dist.sample_and_logp()
            q1_t, q2_t = self.target_critic(self.target_encoder(next_obs), next_action)
            out[QF_TARGET_NEXT] = torch.min(q1_t, q2_t)

        # Actor on detached features; the critic scores the reparameterised action with its own
        # parameters detached, so the actor loss reaches neither the encoder nor the critic.
        h_pi = h.detach()
        dist_inputs = self.actor(h_pi)
        action, out[LOGP_CURR] = dist_cls.from_logits(dist_inputs).rsample_and_logp()
        q1_pi, q2_pi = self.critic.forward_frozen(h_pi, action)
        out[Q_CURR] = torch.min(q1_pi, q2_pi)
        out[Columns.ACTION_DIST_INPUTS] = dist_inputs
        out[ACTION_SAMPLE] = action
        out[ACTION_MEAN] = squashed_mean(dist_inputs)
        out[ACTOR_FEATURES] = h_pi
        return out

    # --- RLlib APIs --------------------------------------------------------------------------------
    def get_non_inference_attributes(self) -> List[str]:
        return ["critic", "target_encoder", "target_critic", "log_alpha", "augment"]

    def make_target_networks(self) -> None:
        self.target_encoder = make_target_network(self.encoder)
        self.target_critic = make_target_network(self.critic)

    def get_target_network_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.critic, self.target_critic)]

    def forward_target(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Target ``min(Q1', Q2')`` of ``obs: (B, C, H, W)`` and ``actions: (B, A)`` -> ``(B,)``."""
        return torch.min(*self.target_critic(self.target_encoder(batch[Columns.OBS]), batch[Columns.ACTIONS]))

    def compute_q_values(self, batch: Dict[str, Any]) -> torch.Tensor:
        """``min(Q1, Q2)`` of ``obs: (B, C, H, W)`` uint8 and ``actions: (B, A)`` -> ``(B,)`` (no augmentation)."""
        return torch.min(*self.critic(self.encoder(batch[Columns.OBS]), batch[Columns.ACTIONS]))

    @torch.no_grad()
    def soft_update_targets(self, critic_tau: float, encoder_tau: float) -> None:
        """Polyak update: ``target <- tau * online + (1 - tau) * target``.

        RAD/CURL rates: ``encoder_tau`` for the conv encoder and the critic's trunk, ``critic_tau`` for
        the two Q MLPs.
        """
        pairs = [(self.encoder, self.target_encoder, encoder_tau),
                 (self.critic.trunk, self.target_critic.trunk, encoder_tau),
                 (self.critic.q1, self.target_critic.q1, critic_tau),
                 (self.critic.q2, self.target_critic.q2, critic_tau)]
        for online, target, tau in pairs:
            for p_t, p in zip(target.parameters(), online.parameters()):
                p_t.lerp_(p, tau)
