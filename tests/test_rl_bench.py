"""The plain-PyTorch reference update equals the RLlib learner's update on the columnar path, and
`covr bench learner --json` prints its figures.

The RLlib side is fed exactly as ``CovrSAC``'s training step feeds it: replay columns
(``CovrEpisodeReplayBuffer.sample``) -> :func:`covr_ray.rl.training_step.columns_batch` ->
``Learner.update(batch=...)``; the plain side gets the same arrays as tensors. The two updates are the
same maths summed in a different order (RLlib's loss code vs
``covr_ray/rl/plain.py``), so their results agree only up to rounding, and Adam amplifies rounding: it
normalises each element's step, ``lr * m / (sqrt(v) + eps)``, so a gradient element near 0 whose float32
value is mostly rounding noise (a conv-weight gradient sums ``B * H' * W'`` terms that cancel) gets a step
that differs by a large fraction of ``lr`` between two summation orders. No float32 tolerance on the
weights is both sound and strong (one CPU gave 1.19e-6 on ``encoder.convs.4.weight`` where another gave
3.8e-7). So both updates run in float64 (``module.double()``: same parameter objects, so RLlib's
optimizers still hold them; RLlib casts the float batch columns to float32, which float64 represents
exactly) and every check has a tolerance derived in :mod:`support.numerics`:

- each of the 3 updates starts from one common state (the plain copy takes the learner's weights,
  targets, temperature and Adam moments first), so each comparison is of one computation, never of
  rounding compounded through earlier updates;
- gradients: each is at most ``depth`` dependent sums of at most ``n`` terms (the longest sum of any
  layer, forward or backward, from :func:`support.numerics.accumulation_lengths`; ``depth`` = twice the layer
  count + 2), so two orders differ by at most ``2 * depth * gamma_n(float64) * scale`` with ``scale`` =
  the tensor's largest gradient element (n = 1936, depth = 36 here: ``1.5e-11 * scale``, against
  O(scale) for any real bug). That ``scale`` bounds the terms of every element was validated where
  errors are measurable: the same update's float32 gradients differ from its float64 ones by at most
  2e-4 of this bound evaluated in float32;
- weights after Adam: that gradient bound times Adam's per-element sensitivity
  (:func:`support.numerics.adam_sensitivity`, ``<= lr / eps`` for a zero gradient), plus Adam's own roundings;
  Polyak targets: ``tau`` times the online bound plus the lerp's roundings;
- logged losses: RLlib's metric is the float64 loss rounded to float32 (``u32 |L|``), plus the float64
  sum bound.

A wrong sign, a missing term or a wrong target moves gradients by O(their size) and weights by O(lr),
orders of magnitude above these bounds; the test also asserts that 99 % of the weights an update moves
move by over 100x their tolerance. Each of these mutations of ``plain.py`` fails it: prior term's sign,
entropy term dropped from the TD target, Q1 instead of min Q in the target or in the actor loss,
terminal mask dropped, discount squared, alpha loss's sign, entropy's sign in the actor loss,
log-prob correction's sign, critic loss halved, Huber delta 2, next_obs not augmented, ``tau`` and
``encoder_tau`` swapped, the temperature's beta1, the critic's learning rate x0.9, target update one
step early.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from covr_ray.bench.learner import run_plain_bench
from covr_ray.cli import main
from covr_ray.errors import ConfigError
from covr_ray.rl.plain import PlainPixelSAC
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
from covr_ray.rl.training_step import columns_batch
from support.dot_env import DotEnv, PriorInfoWrapper
from support.learner import MID, TS, collect_from, make_learner, tiny_cfg
from support.numerics import (accumulation_lengths, adam_sensitivity, assert_close_within, cast_atol, chain_atol,
                              unit_roundoff)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _UpdateNets(nn.Module):
    """Every network one update runs, so :func:`support.numerics.accumulation_lengths` sees all their layers.

    Shapes: ``obs: (B, C, H, W)`` uint8, ``actions: (B, A)`` -> ``(B,)`` (a sum of the heads' outputs).
    """

    def __init__(self, module: Any) -> None:
        super().__init__()
        self.encoder, self.critic, self.actor = module.encoder, module.critic, module.actor

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        h = self.encoder(obs)
        return torch.stack(self.critic(h, actions), -1).sum(-1) + self.actor(h).sum(-1)


class _EndsAt(gym.Wrapper):
    """Terminates every episode after ``steps`` steps, so batches hold terminal transitions (DotEnv only
    truncates) and the TD target's ``(1 - terminated)`` mask is exercised."""

    def __init__(self, env: gym.Env, steps: int) -> None:
        super().__init__(env)
        self.steps, self._t = steps, 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        self._t = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        return obs, reward, terminated or self._t >= self.steps, truncated, info


def _collect(steps: int, seed: int, episode_steps: int = 6) -> CovrEpisodeReplayBuffer:
    """Random-action transitions of terminating episodes (the unfinished last one left out), priors every
    other step."""
    return collect_from(PriorInfoWrapper(_EndsAt(DotEnv({"size": 24}), episode_steps), every=2), steps, seed,
                        keep_unfinished=False)


PARTS = ("encoder", "actor", "critic", "target_encoder", "target_critic")
OPTIMIZERS = {"qf": "critic_opt", "policy": "actor_opt", "alpha": "alpha_opt"}


def _params(owner: Any) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` of the module's or the plain trainer's networks and temperature."""
    out = {f"{part}.{name}": p for part in PARTS for name, p in getattr(owner, part).named_parameters()}
    out["log_alpha"] = owner.log_alpha
    return out


@torch.no_grad()
def _sync(plain: PlainPixelSAC, learner: Any) -> None:
    """Give the plain trainer the learner's state: weights, targets, temperature and Adam moments
    (copied per parameter name; the plain optimizers keep their own hyperparameters)."""
    mine, theirs = _params(plain), _params(learner.module[MID])
    for name, p in mine.items():
        p.copy_(theirs[name])
    name_of = {id(p): name for name, p in theirs.items()}
    for rllib_name, plain_name in OPTIMIZERS.items():
        rllib_opt, plain_opt = learner.get_optimizer(MID, rllib_name), getattr(plain, plain_name)
        for p in rllib_opt.param_groups[0]["params"]:
            plain_opt.state[mine[name_of[id(p)]]] = {k: v.clone() for k, v in rllib_opt.state[p].items()}


@pytest.mark.parametrize("base,lam,critic_loss,gate", [("rad", 0.0, "mse", "none"), ("sac", 3.0, "mse", "none"),
                                                      ("rad", 0.0, "huber", "none"), ("rad", 3.0, "mse", "q_filter")])
def test_plain_pytorch_update_matches_the_rllib_learner(base: str, lam: float, critic_loss: str, gate: str) -> None:
    cfg = tiny_cfg(base=base, lam=lam, critic_loss=critic_loss, gate=gate)
    learner = make_learner(cfg, seed=3)
    module = learner.module[MID]
    module.double()  # in place: RLlib's optimizers keep the same parameter objects (their state is still empty)
    s = cfg.sac
    plain = PlainPixelSAC.from_module(module, gamma=s.gamma, actor_lr=s.actor_lr, critic_lr=s.critic_lr,
                                      alpha_lr=s.alpha_lr, alpha_beta=s.alpha_beta, tau=s.tau,
                                      encoder_tau=s.encoder_tau, target_update_every=s.target_update_every,
                                      prior_weight=lam, prior_action_source=s.prior_action_source,
                                      critic_loss=s.critic_loss, prior_gate=s.prior_gate)
    buf = _collect(60, seed=9)
    batch_size = 16
    terminals = priors = 0
    gate_passes: list[float] = []
    example = buf.sample(batch_size)
    lengths = accumulation_lengths(_UpdateNets(module), torch.as_tensor(example["obs"]),
                                   torch.as_tensor(example["actions"], dtype=torch.float64))
    n, depth = max(lengths.values()), 2 * len(lengths) + 2
    u64 = unit_roundoff(torch.float64)
    taus = {"encoder": s.encoder_tau, "critic.trunk": s.encoder_tau, "critic.q1": s.tau, "critic.q2": s.tau}
    optimizer_of = {id(p): learner.get_optimizer(MID, name)
                    for name in OPTIMIZERS for p in learner.get_optimizer(MID, name).param_groups[0]["params"]}
    for step in range(3):  # 3 updates: includes one target update (every 2)
        if step:
            _sync(plain, learner)
        before = {k: v.detach().clone() for k, v in _params(module).items()}
        arrays = buf.sample(batch_size)
        terminals += int(arrays["terminateds"].sum())
        priors += int(arrays["prior_mask"].sum())
        torch.manual_seed(step)
        results = learner.update(batch=columns_batch(arrays, MID), timesteps=TS)
        torch.manual_seed(step)
        metrics = plain.update({k: torch.as_tensor(v) for k, v in arrays.items()})

        if gate != "none":
            # same rows passed (RLlib keeps its metrics in float32)
            assert results[MID]["prior_gate_pass"].peek() == pytest.approx(metrics["plain/gate_pass"], rel=1e-6)
            gate_passes.append(metrics["plain/gate_pass"])
        for key, plain_key in (("critic_loss", "plain/critic"), ("prior_loss", "plain/prior")):
            value = metrics[plain_key]
            atol = cast_atol(value, torch.float32) + chain_atol(depth, n, max(1.0, abs(value)), torch.float64)
            assert_close_within(results[MID][key].peek(), value, atol, f"step {step} {key}")

        theirs, mine = _params(module), _params(plain)
        far = [0, 0]  # weights the update moved by more than 100x their tolerance / moved at all
        online = {k: p for k, p in theirs.items() if not k.startswith("target_")}
        grad_tol: dict[str, float] = {}
        for name, p in online.items():
            g, g_plain = p.grad, mine[name].grad
            assert (g is None) == (g_plain is None), f"step {step}: {name} has a gradient on one side only"
            scale = max(float(g.abs().max()), float(g_plain.abs().max()))
            grad_tol[name] = 2.0 * chain_atol(depth, n, scale, torch.float64)
            assert_close_within(g, g_plain, grad_tol[name], f"step {step} gradient of {name}")
        for name, p in theirs.items():
            w, w_plain = p.detach(), mine[name].detach()
            if name.startswith("target_"):
                src = name[len("target_"):]
                tau = next(t for prefix, t in taus.items() if src.startswith(prefix))
                p_src = theirs[src]
                atol = (tau * _weight_tol(p_src, optimizer_of[id(p_src)], grad_tol[src], u64)
                        + 4.0 * u64 * (w.abs() + p_src.detach().abs()))
            else:
                atol = _weight_tol(p, optimizer_of[id(p)], grad_tol[name], u64)
                moved = (w - before[name]).abs()
                far[0] += int((moved > 100.0 * atol).sum())
                far[1] += int((moved > 0).sum())
            assert_close_within(w, w_plain, atol, f"step {step} {name}")
        # the bounds are tight: nearly every weight the update moved, moved by > 100x its tolerance
        assert far[1] > 1000 and far[0] >= 0.99 * far[1], f"step {step}: {far[0]} of {far[1]} moved weights"
    assert terminals > 0  # the batches did exercise the terminal mask
    assert 0 < priors < 3 * batch_size  # and the prior columns, rows with and without a prior
    if gate != "none":  # and the gate, with rows on both sides of it
        assert any(0.0 < p < 1.0 for p in gate_passes), gate_passes


def _weight_tol(p: torch.Tensor, optimizer: torch.optim.Adam, grad_tol: float, u: float) -> torch.Tensor:
    """Bound on one Adam step's weight difference from gradients ``grad_tol`` apart, plus Adam's own
    roundings (about 8 on values no larger than ``|w|`` and the step, itself below ``3 lr`` here)."""
    lr = float(optimizer.param_groups[0]["lr"])
    return adam_sensitivity(optimizer, p) * grad_tol + 16.0 * u * (p.detach().abs() + 3.0 * lr)


def test_bench_learner_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "learner", "--json", "--batch-size", "8", "--image-size", "24", "--updates", "2",
                 "--warmup", "1", "--action-dim", "2", "--set", "sac.hidden_dim=32", "--set", "sac.num_filters=8",
                 "--set", "sac.feature_dim=16"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"updates_per_s", "batch_size", "obs_shape", "device", "plain_updates_per_s",
            "rllib_over_plain"} <= figures.keys()
    assert figures["batch_size"] == 8 and figures["obs_shape"] == [9, 24, 24] and figures["device"] == "cpu"
    assert figures["updates_per_s"] > 0 and figures["rllib_over_plain"] > 0


def test_bench_learner_plain_path_runs_without_ray_or_gymnasium() -> None:
    """`--paths plain` is what a GPU machine with PyTorch alone runs (cluster/gpu_figures.sh): with Ray and
    gymnasium made unimportable it still times the reference learner, on batches sampled from its replay and
    on one batch already on the device."""
    code = textwrap.dedent("""
        import json, sys
        sys.modules["ray"] = None
        sys.modules["gymnasium"] = None
        from covr_ray.cli import main
        sys.exit(main(["bench", "learner", "--paths", "plain", "--json", "--batch-size", "8", "--image-size",
                       "24", "--updates", "2", "--warmup", "1", "--action-dim", "2", "--device", "cpu",
                       "--set", "sac.hidden_dim=32", "--set", "sac.num_filters=8", "--set", "sac.feature_dim=16"]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["paths"] == "plain" and figures["device"] == "cpu" and figures["obs_shape"] == [9, 24, 24]
    assert figures["updates_per_s"] > 0 and figures["resident_updates_per_s"] > 0
    assert figures["batch_size"] == 8 and figures["action_dim"] == 2 and figures["updates_timed"] == 2


def test_bench_learner_plain_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="--action-dim"):
        run_plain_bench(action_dim=0, batch_size=8, image_size=24, updates=1, device="cpu")
