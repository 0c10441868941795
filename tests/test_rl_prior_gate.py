"""The critic gate on COVR's regulariser (``sac.prior_gate=q_filter``, beyond the paper): a sample keeps its
prior only where the critic rates the VLM's action above the policy's own. Local learners on the tiny dot
env (no Ray cluster), without augmentation so the test can evaluate the critic on the loss's own features.
Covered: the logged pass share and term are the critic's comparison; a prior the critic rates lower leaves
the actor's update as without guidance; a prior it rates higher is pulled toward as without the gate; bad
values are refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY

from covr_ray.config import load_config
from covr_ray.errors import ConfigError, LearnerError
from covr_ray.rl.plain import PlainPixelSAC
from covr_ray.rl.plain_train import build_trainer
from covr_ray.rl.training_step import columns_batch
from support.dot_env import DotEnv, PriorInfoWrapper
from support.learner import MID, TS, collect_from, make_learner, tiny_cfg

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LAM = 5.0


def _arrays(seed: int = 0) -> dict:
    return collect_from(PriorInfoWrapper(DotEnv({"size": 24}), every=2), 40, seed).sample(16)


def _better_and_worse(learner: Any, arrays: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the policy's action ``a_r``, and of 256 random actions the one the critic rates highest and
    the one it rates lowest; asserts both clear ``Q(o, a_r)`` by a margin, so no comparison is a near tie."""
    module = learner.module[MID]
    cands = np.random.default_rng(seed).uniform(-1, 1, (256, 2)).astype(np.float32)
    with torch.no_grad():
        h = module.encoder(torch.as_tensor(arrays["obs"]))
        a_r = torch.tanh(module.actor(h)[:, :2])
        q_r = torch.min(*module.critic(h, a_r)).numpy()
        q_c = np.stack([torch.min(*module.critic(h, torch.as_tensor(np.tile(c, (len(h), 1)))))
                        .numpy() for c in cands])
    rows = np.arange(len(h))
    best, worst = q_c.argmax(0), q_c.argmin(0)
    margin = 1e-4 * max(1.0, float(np.abs(q_r).max()))
    assert np.all(q_c[best, rows] > q_r + margin) and np.all(q_c[worst, rows] < q_r - margin), "near tie"
    return a_r.numpy(), cands[best], cands[worst]


def _update(learner: Any, arrays: dict, prior: np.ndarray, seed: int = 0) -> Any:
    batch = {**arrays, "prior_action": prior.astype(np.float32), "prior_mask": np.ones(len(prior), np.float32)}
    torch.manual_seed(seed)
    return learner.update(batch=columns_batch(batch, MID), timesteps=TS)[MID]


def _actor(learner: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.module[MID].actor.state_dict().items()}


def test_pass_share_and_term_are_the_critics_comparison() -> None:
    arrays = _arrays()
    learner = make_learner(tiny_cfg(base="sac", lam=LAM, gate="q_filter"), seed=1)
    a_r, better, worse = _better_and_worse(learner, arrays)
    prior = np.where((np.arange(16) % 4 == 0)[:, None], better, worse)  # 4 of 16 rows preferred by the critic
    results = _update(learner, arrays, prior)
    assert results["prior_gate_pass"].peek() == pytest.approx(0.25)
    assert results["prior_coverage"].peek() == 1.0  # every row carries a prior, gated or not
    expected = float(((better - a_r) ** 2).sum(-1)[::4].mean())
    assert results["prior_loss"].peek() == pytest.approx(expected, rel=1e-5)


def test_a_prior_the_critic_rates_lower_leaves_the_update_unguided() -> None:
    arrays = _arrays(seed=2)
    gated = make_learner(tiny_cfg(base="sac", lam=LAM, gate="q_filter", actor_lr=1e-2), seed=3)
    free = make_learner(tiny_cfg(base="sac", lam=0.0, actor_lr=1e-2), seed=3)
    pulled = make_learner(tiny_cfg(base="sac", lam=LAM, actor_lr=1e-2), seed=3)
    _, _, worse = _better_and_worse(gated, arrays)
    start = _actor(gated)
    results = _update(gated, arrays, worse)
    _update(free, arrays, worse)
    _update(pulled, arrays, worse)
    assert results["prior_gate_pass"].peek() == 0.0 and results["prior_loss"].peek() == 0.0
    a_gated, a_free, a_pulled = _actor(gated), _actor(free), _actor(pulled)
    assert any(not torch.equal(a_gated[k], start[k]) for k in start)  # SAC's own loss still moved the actor
    # the gated term is lam * 0 with zero gradient: the same update as without guidance
    assert all(torch.allclose(a_gated[k], a_free[k], rtol=0, atol=1e-7) for k in start)
    assert any((a_pulled[k] - a_free[k]).abs().max() > 1e-4 for k in start)  # ungated, the prior does pull


def _policy_grads(learner: Any, arrays: dict, prior: np.ndarray) -> list[torch.Tensor]:
    """Gradient of the loss the policy optimizer back-propagates, w.r.t. the actor's weights (no step)."""
    batch = {**arrays, "prior_action": prior.astype(np.float32), "prior_mask": np.ones(len(prior), np.float32)}
    batch = learner._make_batch_if_necessary(
        type("TD", (), {"batch": columns_batch(batch, MID), "episodes": None})()).policy_batches
    batch = {mid: dict(b) for mid, b in batch.items()}
    torch.manual_seed(0)
    fwd = learner.module.forward_train(batch)
    learner.compute_losses(fwd_out=fwd, batch=batch)
    loss = learner._temp_losses[(MID, POLICY_LOSS_KEY)]
    grads = torch.autograd.grad(loss, list(learner.module[MID].actor.parameters()))
    learner._temp_losses.clear()
    return grads


def test_a_prior_the_critic_rates_higher_is_pulled_toward_as_without_the_gate() -> None:
    """(Gradients, not weights: Adam's first step is about lr * sign(gradient) per weight, and a prior the
    critic prefers pulls mostly the way SAC's own loss does, so the two steps would hardly differ.)"""
    arrays = _arrays(seed=4)
    gated = make_learner(tiny_cfg(base="sac", lam=LAM, gate="q_filter"), seed=5)
    plain = make_learner(tiny_cfg(base="sac", lam=LAM), seed=5)
    free = make_learner(tiny_cfg(base="sac", lam=0.0), seed=5)
    _, better, _ = _better_and_worse(gated, arrays)
    g_gated, g_plain, g_free = (_policy_grads(learner, arrays, better) for learner in (gated, plain, free))
    # same samples, same term: the same gradient up to rounding (the gate's mask holds exact ones)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g_gated, g_plain))
    pull = sum(float((a - b).abs().sum()) for a, b in zip(g_gated, g_free))
    assert pull > 1e-3 * sum(float(b.abs().sum()) for b in g_free)  # the term is there
    results = _update(gated, arrays, better)
    assert results["prior_gate_pass"].peek() == 1.0
    assert results["prior_loss"].peek() == pytest.approx(_update(plain, arrays, better)["prior_loss"].peek(),
                                                         rel=1e-6)


def test_bad_gate_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="prior_gate"):
        load_config("smoke", overrides=["sac.prior_gate=always"])
    trainer, _ = build_trainer(tiny_cfg(), (9, 24, 24), 2, "cpu")
    s = tiny_cfg().sac
    with pytest.raises(LearnerError, match="prior_gate"):
        PlainPixelSAC(trainer.encoder, trainer.actor, trainer.critic, 0.0, gamma=s.gamma, actor_lr=s.actor_lr,
                      critic_lr=s.critic_lr, alpha_lr=s.alpha_lr, alpha_beta=s.alpha_beta, tau=s.tau,
                      encoder_tau=s.encoder_tau, target_update_every=s.target_update_every, augmentation_pad=0,
                      prior_gate="always")
