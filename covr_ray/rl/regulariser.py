"""COVR's regulariser on the actor loss, in plain torch (shared by the RLlib learner and the plain trainer).

Kept free of RLlib imports so the plain-PyTorch path (:mod:`covr_ray.rl.plain`) runs where Ray is absent.

The critic gate (``sac.prior_gate: q_filter``, beyond the paper): the Q-filter of Nair et al., "Overcoming
Exploration in Reinforcement Learning with Demonstrations" (ICRA 2018), applied to the VLM's actions. A
sample keeps its prior only where the critic rates the VLM's action above the policy's own,
``min(Q1, Q2)(o, a_v) > min(Q1, Q2)(o, a_r)``; elsewhere the sample is treated as carrying no prior. The
paper's term pulls the actor toward ``a_v`` everywhere, which costs return when the VLM answers worse than
the agent already acts (docs/results.md: a VLM that answers one action to every frame); the gate lets the
critic, trained on the same transitions, decide per sample. The comparison is made without gradient, on the
same (augmented) features and ``a_r`` as the term itself.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from covr_ray.errors import LearnerError

#: ``sac.prior_gate`` values.
PRIOR_GATES = ("none", "q_filter")


def check_prior_gate(value: str) -> str:
    """``value`` if it is one of :data:`PRIOR_GATES`, else LearnerError naming it."""
    if value not in PRIOR_GATES:
        raise LearnerError(f"prior_gate must be one of {PRIOR_GATES}, got {value!r}")
    return value


def prior_regulariser(policy_action: torch.Tensor, prior_action: torch.Tensor,
                      prior_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """COVR's term before weighting: mean over samples with a prior of ``||a_v - a_r||^2``.

    Shapes: ``policy_action: (B, A)``, ``prior_action: (B, A)``, ``prior_mask: (B,)`` in {0, 1}.
    Returns ``(loss, coverage)``: the scalar term (0 when no sample has a prior) and the share of the
    batch that carries a prior. Samples without a prior contribute neither value nor gradient (their
    prior is zeroed first, so a NaN placeholder cannot leak in).
    """
    mask = prior_mask.to(policy_action.dtype)
    prior = torch.where(mask.unsqueeze(-1) > 0, prior_action.to(policy_action.dtype),
                        torch.zeros_like(policy_action))
    sq = ((prior - policy_action) ** 2).sum(-1)
    loss = (mask * sq).sum() / mask.sum().clamp(min=1.0)
    return loss, mask.mean()


def q_filter(q_of: Callable[[torch.Tensor], torch.Tensor], policy_action: torch.Tensor, prior_action: torch.Tensor,
             prior_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic gate: ``prior_mask`` kept only where ``q_of(a_v) > q_of(a_r)`` (module docstring).

    ``q_of`` maps actions ``(B, A)`` to the critic's ``min(Q1, Q2)`` ``(B,)`` on the batch's observations;
    it is called twice, without gradient. Returns ``(mask, pass_frac)``: the gated mask ``(B,)`` in {0, 1}
    (same dtype as ``prior_mask``) and the share of the samples with a prior that passed (0 when none has
    one). A masked-out placeholder prior (zeros or NaN) is never given to the critic.
    """
    with torch.no_grad():
        has = prior_mask > 0
        a_r = policy_action.detach()
        a_v = torch.where(has.unsqueeze(-1), prior_action.to(a_r.dtype), a_r)
        passed = has & (q_of(a_v) > q_of(a_r))
        frac = passed.sum().to(a_r.dtype) / has.sum().clamp(min=1).to(a_r.dtype)
    return passed.to(prior_mask.dtype), frac


def guided_term(q_of: Callable[[torch.Tensor], torch.Tensor], policy_action: torch.Tensor,
                prior_action: torch.Tensor, prior_mask: torch.Tensor,
                gate: str) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The regulariser over the samples ``gate`` keeps (both trainers' one path to it).

    ``gate``: ``none`` (every sample with a prior) or ``q_filter`` (:func:`q_filter`, ``q_of`` as there;
    not called otherwise). Returns ``(loss, coverage, pass_frac)``: the term as it enters the loss, the share
    of the batch with a prior (gated or not), and the gate's pass share (None without a gate).
    """
    mask, passed = prior_mask, None
    if gate == "q_filter":
        mask, passed = q_filter(q_of, policy_action, prior_action, prior_mask)
    loss, _ = prior_regulariser(policy_action, prior_action, mask)
    return loss, prior_mask.to(policy_action.dtype).mean(), passed
