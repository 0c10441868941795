"""The SAC learners on tiny pixel batches (local Learner objects, no Ray cluster), fed as CovrSAC's
training step feeds them: replay columns -> ``columns_batch`` -> ``Learner.update(batch=...)``. Covered:
the env's step-info priors reach the loss, the regulariser's value and direction, lambda = 0 equals the
base learner bit for bit, the actor loss never reaches the encoder, lambda switches at run time. The
update itself is checked against the plain-PyTorch reference in test_rl_bench.py."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
import torch
import gymnasium as gym
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY

from covr_ray.columns import INFO_PRIOR_ACTION, INFO_PRIOR_MASK, INFO_STEP_ID, PRIOR_ACTION, PRIOR_MASK
from covr_ray.errors import LearnerError
from covr_ray.rl.learner import CovrSACLearner, PixelSACLearner
from covr_ray.rl.networks import NetworkSpec, build_policy
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
from covr_ray.rl.training_step import columns_batch
from support.dot_env import DotEnv, PriorInfoWrapper
from support.learner import MID, TS, collect_from, make_learner, tiny_cfg
from support.numerics import ELEMENTARY_FUNCTION_ULPS, assert_close_within, unit_roundoff

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def collect(steps: int = 40, seed: int = 0, fixed_prior: Optional[list] = None, every: int = 2) -> CovrEpisodeReplayBuffer:
    return collect_from(PriorInfoWrapper(DotEnv({"size": 24}), every=every, fixed_prior=fixed_prior), steps, seed)


def params(learner: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.module[MID].state_dict().items()}


def update(learner: Any, arrays: dict) -> Any:
    """One update on replay arrays, as CovrSAC's training step makes it; returns the module's results."""
    return learner.update(batch=columns_batch(arrays, MID), timesteps=TS)[MID]


def set_prior(arrays: dict, prior: Any) -> dict:
    """The same transitions with a prior on every row: ``prior`` fixed ``(A,)`` or ``(B, A)``."""
    b = len(arrays["rewards"])
    return {**arrays, PRIOR_ACTION: np.broadcast_to(np.asarray(prior, np.float32), (b, 2)).copy(),
            PRIOR_MASK: np.ones(b, np.float32)}


class _InfoLog(gym.Wrapper):
    """Keeps every step info by its step id (what the env said about each transition)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.by_id: dict[int, dict] = {}

    def step(self, action: Any) -> Any:
        out = self.env.step(action)
        self.by_id[out[4][INFO_STEP_ID]] = out[4]
        return out


class SpyLearner(CovrSACLearner):
    """Records the batch the loss sees."""

    seen: list = []

    def compute_loss_for_module(self, *, module_id: Any, config: Any, batch: dict, fwd_out: dict) -> Any:
        SpyLearner.seen.append({k: batch[k].detach().clone() for k in (PRIOR_ACTION, PRIOR_MASK, Columns.OBS)})
        return super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)


def test_prior_columns_reach_the_loss() -> None:
    """The env's step-info priors, stored by the replay, arrive in the loss's batch for the right rows."""
    env = _InfoLog(PriorInfoWrapper(DotEnv({"size": 24}), every=2))
    buf = collect_from(env, 40, seed=1)
    arrays = buf.sample(16)
    infos = [env.by_id[int(sid)] for sid in arrays["step_ids"]]
    expected_mask = np.array([info[INFO_PRIOR_MASK] for info in infos], np.float32)
    expected_prior = np.array([info.get(INFO_PRIOR_ACTION, [0.0, 0.0]) if info[INFO_PRIOR_MASK] else [0.0, 0.0]
                               for info in infos], np.float32)
    assert 0 < expected_mask.sum() < 16
    SpyLearner.seen = []
    learner = make_learner(tiny_cfg(), SpyLearner)
    results = update(learner, arrays)
    batch = SpyLearner.seen[-1]
    assert batch[PRIOR_ACTION].shape == (16, 2) and batch[PRIOR_ACTION].dtype == torch.float32
    assert batch[PRIOR_MASK].shape == (16,) and batch[PRIOR_MASK].dtype == torch.float32
    np.testing.assert_array_equal(batch[PRIOR_MASK].numpy(), expected_mask)
    np.testing.assert_array_equal(batch[PRIOR_ACTION].numpy(), expected_prior)
    np.testing.assert_array_equal(batch[Columns.OBS].numpy(), arrays["obs"])
    assert results["prior_coverage"].peek() == pytest.approx(expected_mask.mean())


def test_prior_equal_to_policy_action_gives_zero_term() -> None:
    learner = make_learner(tiny_cfg(base="sac"))  # no augmentation: a_r is the policy's mean on obs
    module = learner.module[MID]
    arrays = collect(30, seed=2).sample(16)
    with torch.no_grad():
        own = torch.tanh(module.actor(module.encoder(torch.as_tensor(arrays["obs"])))[:, :2]).numpy()
    results = update(learner, set_prior(arrays, own))
    assert results["prior_coverage"].peek() == 1.0
    assert results["prior_loss"].peek() < 1e-10
    # a different prior gives a clearly non-zero term
    results = update(learner, set_prior(arrays, [0.9, -0.9]))
    assert results["prior_loss"].peek() > 0.1


def _distance_to(learner: Any, arrays: dict, target: np.ndarray) -> float:
    module = learner.module[MID]
    with torch.no_grad():
        act = torch.tanh(module.actor(module.encoder(torch.as_tensor(arrays["obs"])))[:, :2]).numpy()
    return float(np.linalg.norm(act - target, axis=1).mean())


@pytest.mark.parametrize("source", ["mean", "sample"])
def test_fixed_prior_pulls_the_policy_toward_it(source: str) -> None:
    target = np.array([0.8, -0.6], np.float32)
    buf = collect(40, seed=3)
    arrays = set_prior(buf.sample(16), target)
    guided = make_learner(tiny_cfg(lam=5.0, source=source, actor_lr=1e-2))
    free = make_learner(tiny_cfg(lam=0.0, actor_lr=1e-2))
    start = _distance_to(guided, arrays, target)
    assert start == pytest.approx(_distance_to(free, arrays, target))
    losses = []
    for i in range(20):
        torch.manual_seed(i)
        losses.append(update(guided, arrays)["prior_loss"].peek())
        torch.manual_seed(i)
        update(free, arrays)
    if source == "mean":  # deterministic a_r: the term falls at every update
        assert all(b < a for a, b in zip(losses, losses[1:]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert _distance_to(guided, arrays, target) < 0.8 * start
    assert _distance_to(guided, arrays, target) < 0.85 * _distance_to(free, arrays, target)


def test_lambda_zero_is_bit_identical_to_the_base_learner() -> None:
    arrays = collect(40, seed=4).sample(16)
    covr = make_learner(tiny_cfg(lam=0.0), CovrSACLearner, seed=7)
    base = make_learner(tiny_cfg(lam=0.0), PixelSACLearner, seed=7)
    guided = make_learner(tiny_cfg(lam=1.0), CovrSACLearner, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(params(covr).values(), params(base).values()))
    for i in range(3):
        for learner in (covr, base, guided):
            torch.manual_seed(100 + i)
            update(learner, arrays)
    p_covr, p_base, p_guided = params(covr), params(base), params(guided)
    start = params(make_learner(tiny_cfg(lam=0.0), PixelSACLearner, seed=7))
    assert any(not torch.equal(p_base[k], start[k]) for k in p_base)  # the updates did change weights
    assert all(torch.equal(p_covr[k], p_base[k]) for k in p_base)
    assert any(not torch.equal(p_guided[k], p_base[k]) for k in p_base if k.startswith("actor."))
    # lambda does not touch the critic's update of the first step, only the actor path
    for opt_name in ("qf", "policy", "alpha"):
        s_covr = covr.get_optimizer(MID, opt_name).state_dict()["state"]
        s_base = base.get_optimizer(MID, opt_name).state_dict()["state"]
        assert all(torch.equal(s_covr[i]["exp_avg"], s_base[i]["exp_avg"]) for i in s_base)


def test_actor_loss_never_reaches_the_encoder() -> None:
    learner = make_learner(tiny_cfg(lam=2.0))
    module = learner.module[MID]
    arrays = set_prior(collect(30, seed=5).sample(16), [0.5, 0.5])
    batch = learner._make_batch_if_necessary(
        type("TD", (), {"batch": columns_batch(arrays, MID), "episodes": None})()).policy_batches
    batch = {mid: {k: v for k, v in b.items()} for mid, b in batch.items()}
    fwd = learner.module.forward_train(batch)
    learner.compute_losses(fwd_out=fwd, batch=batch)
    policy_loss = learner._temp_losses[(MID, POLICY_LOSS_KEY)]
    enc = list(module.encoder.parameters())
    critic = list(module.critic.parameters())
    grads = torch.autograd.grad(policy_loss, enc + critic + list(module.actor.parameters()), allow_unused=True,
                                retain_graph=True)
    assert all(g is None for g in grads[:len(enc) + len(critic)])
    assert any(g is not None and g.abs().sum() > 0 for g in grads[len(enc) + len(critic):])
    qf_loss = learner._temp_losses[(MID, "qf_loss")]
    enc_grads = torch.autograd.grad(qf_loss, enc, allow_unused=True)
    assert all(g is not None for g in enc_grads)  # the critic does train the encoder
    learner._temp_losses.clear()


def test_batch_without_prior_columns_is_refused() -> None:
    learner = make_learner(tiny_cfg(lam=1.0))
    batch = columns_batch(collect(30, seed=6).sample(16), MID)
    del batch.policy_batches[MID][PRIOR_MASK]
    with pytest.raises(LearnerError, match=r"prior columns \['prior_mask'\]"):
        learner.update(batch=batch, timesteps=TS)


def test_prior_weight_switches_at_run_time_and_is_validated() -> None:
    learner = make_learner(tiny_cfg(lam=1.0))
    arrays = set_prior(collect(30, seed=6).sample(16), [0.3, 0.3])
    assert update(learner, arrays)["prior_weight"].peek() == 1.0
    learner.set_prior_weight(0.0)
    assert update(learner, arrays)["prior_weight"].peek() == 0.0
    assert learner.set_prior_weight(2.5) == 2.5 and learner.get_prior_weight() == 2.5
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(LearnerError):
            learner.set_prior_weight(bad)
    assert learner.get_state()["covr_prior_weight"] == 2.5


def test_policy_state_q_values_and_exported_policy_match_the_module() -> None:
    learner = make_learner(tiny_cfg())
    module = learner.module[MID]
    obs = np.random.default_rng(0).integers(0, 255, (5, 9, 24, 24), dtype=np.uint8)
    spec = NetworkSpec(obs_shape=(9, 24, 24), action_dim=2, feature_dim=16, hidden_dim=32, num_filters=8)
    policy = build_policy(spec, learner.policy_state(MID))
    with torch.no_grad():
        expected = torch.tanh(module.actor(module.encoder(torch.as_tensor(obs)))[:, :2])
        # the same float32 weights, ops, shapes and thread in one process: the same sums in the same order
        np.testing.assert_allclose(policy(torch.as_tensor(obs)).numpy(), expected.numpy(), atol=1e-6)
        # RLlib's deterministic (explore=False) action is the squashed mean too, computed differently:
        # ((tanh(m) + 1) / 2) * 2 - 1, i.e. one more tanh evaluation (another kernel may serve the
        # strided view) and 2 roundings of values <= 2 in magnitude (the / 2 and * 2 are exact)
        u = unit_roundoff(torch.float32)
        dist = module.get_inference_action_dist_cls().from_logits(module.actor(module.encoder(torch.as_tensor(obs))))
        assert_close_within(dist.to_deterministic().sample().numpy(), expected.numpy(),
                            2 * ELEMENTARY_FUNCTION_ULPS * u + 2 * 2 * u, "RLlib's deterministic action")
    q = learner.q_values(obs, np.zeros((5, 2), np.float32), MID)
    assert q.shape == (5,) and np.all(np.isfinite(q))
    with pytest.raises(LearnerError):
        learner.q_values(obs, np.zeros((4, 2), np.float32), MID)
