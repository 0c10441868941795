"""COVR's regulariser on the actor loss, in plain torch (shared by the RLlib learner and the plain trainer).

Kept free of RLlib imports so the plain-PyTorch path (:mod:`covr_ray.rl.plain`) runs where Ray is absent.
"""

from __future__ import annotations

import torch


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
