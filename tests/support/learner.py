"""Local SAC learners on the tiny dot env (no Ray cluster), as the learner and benchmark tests build them.

``tiny_cfg``: the smoke preset shrunk to small networks on 24x24 frames; ``make_learner``: a learner of the
algorithm config built from it (seeded by torch, not by RLlib); ``collect_from``: random-action episodes
of an env with prior infos in a replay buffer; ``MID``/``TS``: the module id and the timesteps an update
takes.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from covr_ray.config import load_config
from covr_ray.rl.algo import build_algorithm_config
from covr_ray.rl.rllib_replay import CovrEpisodeReplayBuffer
from support.dot_env import DotEnv

MID = "default_policy"
TS = {"num_env_steps_sampled_lifetime": 1000}


def tiny_cfg(base: str = "rad", lam: float = 1.0, source: str = "mean", actor_lr: float = 1e-3,
             critic_loss: str = "mse", gate: str = "none") -> Any:
    return load_config("smoke", overrides=[
        f"sac.base={base}", f"sac.lam={lam}", f"sac.prior_action_source={source}", f"sac.actor_lr={actor_lr}",
        f"sac.critic_loss={critic_loss}", f"sac.prior_gate={gate}",
        "sac.hidden_dim=32",
        "sac.num_filters=8", "sac.feature_dim=16", "sac.batch_size=16", "sac.augmentation_pad=2",
        "schedule.cold_start_rounds=0", "env.image_size=24"])


def make_learner(cfg: Any, learner_class: Optional[type] = None, seed: int = 0) -> Any:
    config = build_algorithm_config(cfg, env=DotEnv, env_config={"size": 24})
    # No RLlib seeding: on CPU builds it switches torch.use_deterministic_algorithms on for the whole
    # test process. Torch is seeded here instead.
    config.debugging(seed=None)
    if learner_class is not None:
        config.learners(learner_class=learner_class)
    torch.manual_seed(seed)
    return config.build_learner(env=DotEnv({"size": 24}))


def collect_from(env: Any, steps: int, seed: int, keep_unfinished: bool = True) -> CovrEpisodeReplayBuffer:
    """``steps`` uniform-random actions in ``env`` (a DotEnv with prior infos) into a replay buffer, episode by
    episode; the last, unfinished episode too unless ``keep_unfinished`` is False."""
    buf = CovrEpisodeReplayBuffer(1000, frame_stack=3, seed=seed)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    ep = SingleAgentEpisode(observations=[obs], infos=[info], observation_space=env.observation_space,
                            action_space=env.action_space)
    for _ in range(steps):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        obs, r, te, tr, info = env.step(a)
        ep.add_env_step(obs, a, r, infos=info, terminated=te, truncated=tr)
        if te or tr:
            buf.add([ep.to_numpy()])
            obs, info = env.reset()
            ep = SingleAgentEpisode(observations=[obs], infos=[info], observation_space=env.observation_space,
                                    action_space=env.action_space)
    if keep_unfinished and len(ep):
        buf.add([ep.to_numpy()])
    return buf
