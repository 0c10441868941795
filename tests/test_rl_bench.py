"""The plain-PyTorch reference update equals the RLlib learner's update, and `covr bench learner --json`
prints its figures."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from covr_ray.cli import main
from covr_ray.rl.plain import PlainPixelSAC
from test_rl_learner import MID, TS, collect, make_learner, tiny_cfg
from test_rl_testenv import torch_one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("base,lam,critic_loss", [("rad", 0.0, "mse"), ("sac", 3.0, "mse"), ("rad", 0.0, "huber")])
def test_plain_pytorch_update_matches_the_rllib_learner(base: str, lam: float, critic_loss: str) -> None:
    cfg = tiny_cfg(base=base, lam=lam, critic_loss=critic_loss)
    learner = make_learner(cfg, seed=3)
    module = learner.module[MID]
    s = cfg.sac
    plain = PlainPixelSAC.from_module(module, gamma=s.gamma, actor_lr=s.actor_lr, critic_lr=s.critic_lr,
                                      alpha_lr=s.alpha_lr, alpha_beta=s.alpha_beta, tau=s.tau,
                                      encoder_tau=s.encoder_tau, target_update_every=s.target_update_every,
                                      prior_weight=lam, prior_action_source=s.prior_action_source,
                                      critic_loss=s.critic_loss)
    buf = collect(60, seed=9)
    for step in range(3):  # 3 updates: includes one target update (every 2)
        rng_state = buf.core._rng.bit_generator.state
        episodes = buf.sample(16, n_step=1)
        buf.core._rng.bit_generator.state = rng_state  # the same transitions as arrays
        arrays = buf.core.sample(16)
        torch.manual_seed(step)
        results = learner.update(episodes=episodes, timesteps=TS)
        torch.manual_seed(step)
        metrics = plain.update({k: torch.as_tensor(v) for k, v in arrays.items()})
        assert results[MID]["critic_loss"].peek() == pytest.approx(metrics["plain/critic"], rel=1e-5)
        assert results[MID]["prior_loss"].peek() == pytest.approx(metrics["plain/prior"], rel=1e-5, abs=1e-7)
    pairs: dict[str, Any] = {"encoder": plain.encoder, "actor": plain.actor, "critic": plain.critic,
                             "target_encoder": plain.target_encoder, "target_critic": plain.target_critic}
    for prefix, net in pairs.items():
        for name, value in net.state_dict().items():
            np.testing.assert_allclose(getattr(module, prefix).state_dict()[name].numpy(), value.numpy(),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{prefix}.{name}")
    np.testing.assert_allclose(module.log_alpha.detach().numpy(), plain.log_alpha.detach().numpy(), rtol=1e-6)


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
