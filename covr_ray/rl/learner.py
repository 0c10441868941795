"""SAC learners for the pixel module: the base (SAC / RAD) and COVR's VLM-regularised variant.

:class:`PixelSACLearner` is RLlib's continuous SAC loss (``SACTorchLearner``) adapted to one shared
encoder:

- optimizers: ``qf`` = encoder + critic (trunk and both Q MLPs), trained on the *sum* of the two Q
  losses (RAD/DrQ; RLlib's own split ``qf`` / ``qf_twin`` optimizers would let the second one
  overwrite the encoder's gradient), ``policy`` = actor, ``alpha`` = the module's ``log_alpha``;
  Adam with beta1 0.9 for actor and critic and ``alpha_beta`` (RAD: 0.5) for the temperature;
- critic loss: ``critic_loss`` = ``mse`` (default; SAC paper, RAD/CURL/DrQ) replaces RLlib's Huber loss
  (delta 1) by the squared TD error on the same target; ``huber`` keeps RLlib's;
- targets: Polyak-averaged every ``target_update_every`` updates with ``encoder_tau`` for encoder and
  critic trunk and ``tau`` for the Q MLPs (RAD/CURL);
- metrics: besides RLlib's SAC metrics, ``entropy`` = ``-mean(log pi(a|o))`` over the batch, the
  Monte-Carlo entropy estimate of the squashed Gaussian that EDDF reads.

:class:`CovrSACLearner` adds COVR's regulariser to the actor loss::

    L_pi  +  lambda * sum_b m_b ||a_v,b - a_r,b||^2 / max(1, sum_b m_b)

with ``a_v`` = ``prior_action`` and ``m`` = ``prior_mask`` (columns of the train batch, read from the
replay by :func:`covr_ray.rl.training_step.columns_batch`), i.e. the mean over the samples that carry a
prior.
The term goes into the ``(module_id, "policy_loss")`` entry of ``self._temp_losses``, the only one
the policy optimizer back-propagates (RLlib's returned total is only logged).

Which ``a_r``: by default the policy's squashed mean ``tanh(mu(o))`` (``prior_action_source: mean``).
``a_v`` is a point estimate of the action to take in ``o``; the deterministic mean is the action the
deployed policy takes. With a reparameterised sample instead, ``E||a_v - a||^2`` also contains the
policy's variance, so the term would shrink the policy's std and fight SAC's entropy bonus and its
temperature tuning. ``prior_action_source: sample`` (the same reparameterised sample the SAC actor
loss uses) is kept as an ablation. Both are computed on the same (augmented) observation as the SAC
actor loss.

Which samples (``prior_gate``, beyond the paper): ``none`` keeps every sample with a prior; ``q_filter``
keeps those where the critic rates ``a_v`` above ``a_r`` on the same features
(:func:`covr_ray.rl.regulariser.q_filter`), logged as ``prior_gate_pass`` (``learner/prior_gate_pass``).
``prior_coverage`` stays the share of the batch with a prior, gated or not; ``prior_loss`` is the term as
it enters the loss (over the samples that passed). With ``lambda == 0`` (the cold start) the gate is not
evaluated and ``prior_loss`` is the ungated distance.

``lambda`` is a plain float read at every update: the orchestrator switches guidance on after the
cold start with :meth:`CovrSACLearner.set_prior_weight` through the LearnerGroup
(:func:`covr_ray.rl.algo.set_prior_weight`) without rebuilding anything. With ``lambda == 0`` no term
is added to the graph: the update is bit-identical to :class:`PixelSACLearner`'s.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import numpy as np
import torch
from ray.rllib.algorithms.sac.sac_learner import (QF_LOSS_KEY, QF_PREDS, QF_TARGET_NEXT, QF_TWIN_LOSS_KEY,
                                                  QF_TWIN_PREDS)
from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY, Learner
from ray.rllib.utils.typing import ModuleID, TensorType

from covr_ray.columns import PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import LearnerError
from covr_ray.rl.regulariser import check_prior_gate, guided_term
from covr_ray.rl.networks import squashed_mean
from covr_ray.rl.optim import adam
from covr_ray.rl.rl_module import ACTION_MEAN, ACTION_SAMPLE, ACTOR_FEATURES, LOGP_CURR, LOGP_NEXT, PixelSACModule

#: learner_config_dict keys (written by covr_ray.rl.algo.build_algorithm_config) and defaults.
LEARNER_DEFAULTS: Dict[str, Any] = {
    "alpha_beta": 0.5,
    "encoder_tau": 0.05,
    "target_update_every": 2,
    "critic_loss": "mse",
    "prior_weight": 0.0,
    "prior_action_source": "mean",
    "prior_gate": "none",
}

#: metric names logged under the module id (mapped to ``learner/<name>`` by covr_ray.rl.algo).
ENTROPY_KEY = "entropy"
CRITIC_LOSS_KEY = "critic_loss"
PRIOR_LOSS_KEY = "prior_loss"
PRIOR_WEIGHT_KEY = "prior_weight"
PRIOR_COVERAGE_KEY = "prior_coverage"
PRIOR_GATE_KEY = "prior_gate_pass"


def check_prior_weight(value: Any) -> float:
    """lambda must be a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise LearnerError(f"prior weight (lambda) must be a finite number >= 0, got {value!r}")
    return float(value)


class PixelSACLearner(SACTorchLearner):
    """RLlib's SAC loss on :class:`PixelSACModule` (the base algorithm: SAC or RAD)."""

    def build(self) -> None:
        self._covr = {**LEARNER_DEFAULTS, **(self.config.learner_config_dict or {})}
        if self._covr["critic_loss"] not in ("mse", "huber"):
            raise LearnerError(f"critic_loss must be 'mse' or 'huber', got {self._covr['critic_loss']!r}")
        self._num_updates = 0
        super().build()

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        module = self._module[module_id].unwrapped()
        if not isinstance(module, PixelSACModule):
            raise LearnerError(f"{type(self).__name__} trains PixelSACModule, got {type(module).__name__} "
                               f"for module {module_id!r}")
        groups = {
            "qf": (list(module.encoder.parameters()) + list(module.critic.parameters()),
                   config.critic_lr, 0.9),
            "policy": (list(module.actor.parameters()), config.actor_lr, 0.9),
            "alpha": ([module.log_alpha], config.alpha_lr, float(self._covr["alpha_beta"])),
        }
        for name, (params, lr, beta1) in groups.items():
            self.register_optimizer(module_id=module_id, optimizer_name=name,
                                    optimizer=adam(params, betas=(beta1, 0.999)),
                                    params=params, lr_or_lr_schedule=lr)
        # The temperature lives in the module (saved and restored with it); SAC's loss reads it here.
        self.curr_log_alpha[module_id] = module.log_alpha

    def compute_loss_for_module(self, *, module_id: ModuleID, config: Any, batch: Dict[str, Any],
                                fwd_out: Dict[str, TensorType]) -> TensorType:
        total = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        # One critic optimizer for encoder + both Q heads: train it on the sum of the two Q losses.
        twin = self._temp_losses.pop((module_id, QF_TWIN_LOSS_KEY), None)
        if twin is not None:
            self._temp_losses[(module_id, QF_LOSS_KEY)] = self._temp_losses[(module_id, QF_LOSS_KEY)] + twin
        if self._covr["critic_loss"] == "mse":
            mse = self._mse_critic_loss(module_id, config, batch, fwd_out)
            total = total - self._temp_losses[(module_id, QF_LOSS_KEY)] + mse
            self._temp_losses[(module_id, QF_LOSS_KEY)] = mse
        self.metrics.log_dict({ENTROPY_KEY: -fwd_out[LOGP_CURR].detach().mean(),
                               CRITIC_LOSS_KEY: self._temp_losses[(module_id, QF_LOSS_KEY)].detach()},
                              key=module_id, window=1)
        return total

    def _mse_critic_loss(self, module_id: ModuleID, config: Any, batch: Dict[str, Any],
                         fwd_out: Dict[str, TensorType]) -> TensorType:
        """``mean(w (Q1 - y)^2) + mean(w (Q2 - y)^2)`` on RLlib's own TD target ``y`` (same terms, same
        detach) and its per-sample weights ``w`` (ones without prioritised replay)."""
        alpha = torch.exp(self.curr_log_alpha[module_id]).detach()
        next_v = (1.0 - batch[Columns.TERMINATEDS].float()) * (fwd_out[QF_TARGET_NEXT] - alpha * fwd_out[LOGP_NEXT])
        target = (batch[Columns.REWARDS] + (config.gamma ** batch["n_step"]) * next_v).detach()
        weights = batch["weights"]
        return (torch.mean(weights * (fwd_out[QF_PREDS] - target) ** 2)
                + torch.mean(weights * (fwd_out[QF_TWIN_PREDS] - target) ** 2))

    def apply_gradients(self, gradients_dict: Dict[Any, Any]) -> None:
        """RLlib's ``TorchLearner.apply_gradients`` (set the gradients, step every optimizer), with its
        finiteness check done in one fused pass.

        RLlib scans every gradient tensor twice with ``torch.isfinite(grad).all()`` (a bool tensor and a
        host sync per tensor, ~60 tensors): 135 ms per update at 1 torch thread and 1.4-2.1 s at 2 threads
        on the loaded 2-core box, against 5-15 ms for the fused norms here (7.26 M parameters,
        docs/learner.md, "Throughput"). The norm of every gradient is finite exactly when its elements
        are (or it overflowed); only then does RLlib's own path run, which zeroes non-finite elements (with
        its warnings) and steps, so the result is RLlib's in every case.
        """
        grads = [g for g in gradients_dict.values() if g is not None]
        if (self.config.torch_skip_nan_gradients or self._grad_scalers is not None
                or self._lr_scheduler_classes is not None or not grads
                or not bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())):
            super().apply_gradients(gradients_dict)
            return
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = grad
        for module_id, optimizer_names in self._module_optimizers.items():
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()

    def after_gradient_based_update(self, *, timesteps: Dict[str, Any]) -> None:
        # Learner's own hook (lr schedules and their metrics). DQNLearner's target update is replaced
        # by the per-part Polyak rates below, so it is deliberately skipped.
        Learner.after_gradient_based_update(self, timesteps=timesteps)
        self._num_updates += 1
        if self._num_updates % int(self._covr["target_update_every"]) != 0:
            return
        for module_id in self.module.keys():
            module = self.module[module_id].unwrapped()
            if isinstance(module, PixelSACModule):
                config = self.config.get_config_for_module(module_id)
                module.soft_update_targets(critic_tau=config.tau, encoder_tau=float(self._covr["encoder_tau"]))

    # --- signals for the loop (call through LearnerGroup.foreach_learner) -----------------------------
    @property
    def num_updates(self) -> int:
        """Gradient updates this learner has run (since it was built or restored)."""
        return self._num_updates

    def policy_state(self, module_id: ModuleID = "default_policy") -> Dict[str, np.ndarray]:
        """Weights of the deployable policy (``encoder.*`` and ``actor.*``), as numpy arrays."""
        module = self.module[module_id].unwrapped()
        return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
                if k.startswith(("encoder.", "actor."))}

    @torch.no_grad()
    def q_values(self, obs: np.ndarray, actions: np.ndarray, module_id: ModuleID = "default_policy",
                 chunk: int = 256) -> np.ndarray:
        """``min(Q1, Q2)(o, a)`` for the EDDF Q-value ablation.

        Shapes: ``obs: (N, C, H, W)`` uint8, ``actions: (N, A)`` in [-1, 1] -> ``(N,)`` float32.
        """
        module = self.module[module_id].unwrapped()
        obs, actions = np.asarray(obs), np.asarray(actions, dtype=np.float32)
        if obs.shape[1:] != tuple(module.spec.obs_shape) or actions.shape != (len(obs), module.spec.action_dim):
            raise LearnerError(f"q_values needs obs (N, {module.spec.obs_shape}) and actions "
                               f"(N, {module.spec.action_dim}); got {obs.shape} and {actions.shape}")
        return self._in_chunks(lambda o, a: module.compute_q_values({Columns.OBS: o, Columns.ACTIONS: a}),
                               chunk, obs, actions)

    def _in_chunks(self, fn: Any, chunk: int, *arrays: np.ndarray) -> np.ndarray:
        """``fn`` over ``chunk``-row slices of ``arrays`` (moved to the learner's device) -> ``(N,)`` float32."""
        out = [fn(*(torch.as_tensor(a[i:i + chunk], device=self._device) for a in arrays)).float().cpu().numpy()
               for i in range(0, len(arrays[0]), chunk)]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


    @torch.no_grad()
    def state_values(self, obs: np.ndarray, module_id: ModuleID = "default_policy",
                     chunk: int = 256) -> np.ndarray:
        """``V(o) = min(Q1, Q2)(o, tanh(mean(o)))``: the critic's value of the deterministic policy's action
        (used to bootstrap the return-to-go of time-limit-truncated D_f episodes).

        Shapes: ``obs: (N, C, H, W)`` uint8 -> ``(N,)`` float32.
        """
        module = self.module[module_id].unwrapped()
        obs = np.asarray(obs)
        if obs.shape[1:] != tuple(module.spec.obs_shape):
            raise LearnerError(f"state_values needs obs (N, {module.spec.obs_shape}); got {obs.shape}")

        def value(o: torch.Tensor) -> torch.Tensor:
            h = module.encoder(o)
            return torch.min(*module.critic(h, squashed_mean(module.actor(h))))

        return self._in_chunks(value, chunk, obs)


class CovrSACLearner(PixelSACLearner):
    """:class:`PixelSACLearner` plus COVR's prior regulariser on the actor loss (module docstring)."""

    def build(self) -> None:
        super().build()
        self._prior_weight = check_prior_weight(self._covr["prior_weight"])
        source = self._covr["prior_action_source"]
        if source not in ("mean", "sample"):
            raise LearnerError(f"prior_action_source must be 'mean' or 'sample', got {source!r}")
        self._prior_source_key = ACTION_MEAN if source == "mean" else ACTION_SAMPLE
        check_prior_gate(self._covr["prior_gate"])

    def set_prior_weight(self, value: float) -> float:
        """Set lambda for the following updates (0 = guidance off); returns the value now in force."""
        self._prior_weight = check_prior_weight(value)
        return self._prior_weight

    def get_prior_weight(self) -> float:
        return self._prior_weight

    def compute_loss_for_module(self, *, module_id: ModuleID, config: Any, batch: Dict[str, Any],
                                fwd_out: Dict[str, TensorType]) -> TensorType:
        total = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        missing = [c for c in (PRIOR_ACTION, PRIOR_MASK) if c not in batch]
        if missing:
            raise LearnerError(f"train batch lacks the prior columns {missing}; train on replay columns "
                               "(covr_ray.rl.training_step.columns_batch, as CovrSAC's training step does)")
        lam = self._prior_weight
        critic, features = self.module[module_id].unwrapped().critic, fwd_out[ACTOR_FEATURES]
        prior_loss, coverage, passed = guided_term(
            lambda a: torch.min(*critic(features, a)), fwd_out[self._prior_source_key], batch[PRIOR_ACTION],
            batch[PRIOR_MASK], self._covr["prior_gate"] if lam > 0.0 else "none")
        gate = {} if passed is None else {PRIOR_GATE_KEY: passed}
        if lam > 0.0:
            weighted = lam * prior_loss
            self._temp_losses[(module_id, POLICY_LOSS_KEY)] = self._temp_losses[(module_id, POLICY_LOSS_KEY)] + weighted
            total = total + weighted
        self.metrics.log_dict({PRIOR_LOSS_KEY: prior_loss.detach(), PRIOR_COVERAGE_KEY: coverage.detach(),
                               PRIOR_WEIGHT_KEY: lam, **gate}, key=module_id, window=1)
        return total

    def get_state(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["covr_prior_weight"] = self._prior_weight
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(dict(state))
        if "covr_prior_weight" in state:
            self._prior_weight = check_prior_weight(state["covr_prior_weight"])
