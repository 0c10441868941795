"""Learning check (slow, run by hand): pixel cartpole-swingup with the ``rad`` base climbs well above random.

How to run. The defaults are a quick look (20 K env steps). The 100 K-step CPU run that passed (338 vs
random 124 after 86 min on a quiet 2-core box; the curve is in docs/learner.md) is::

    MUJOCO_GL=egl COVR_LEARNING_STEPS=12500 COVR_LEARNING_BATCH=64 COVR_LEARNING_HIDDEN=1024 \
      COVR_LEARNING_IMAGE=64 COVR_LEARNING_THREADS=2 COVR_LEARNING_EVAL_EVERY=625 \
      COVR_LEARNING_EVAL_EPISODES=3 .venv/bin/python -m pytest tests/test_rl_learning.py --run-slow -s -k cartpole

On a GPU machine with Ray, use the preset's sizes (COVR_LEARNING_BATCH=512, COVR_LEARNING_IMAGE=84,
COVR_LEARNING_DEVICE=cuda).

Env vars: ``COVR_LEARNING_STEPS`` (agent steps, x8 env steps; default 2500), ``COVR_LEARNING_BATCH`` (64),
``COVR_LEARNING_HIDDEN`` (256), ``COVR_LEARNING_IMAGE`` (84), ``COVR_LEARNING_STARTS`` (random steps, 1000),
``COVR_LEARNING_EVAL_EVERY`` (500), ``COVR_LEARNING_EVAL_EPISODES`` (2), ``COVR_LEARNING_THREADS`` (1),
``COVR_LEARNING_DEVICE`` (cpu | cuda), ``COVR_LEARNING_OUT`` (curve JSON path).
The curve (agent steps, env steps, deterministic eval return, exploration return, wall time) is written as
JSON after every evaluation (atomically: a run stopped by hand keeps its curve so far). Pass: the final
deterministic return is above the uniform-random policy's (measured in the test on the same env over
max(2, eval episodes) episodes) by at least 100 and at least 2x. On covr_envs' cartpole-swingup, uniform-random episodes
returned 54 to 150 (1000 frames, action repeat 8).

No prior service: lambda = 0, i.e. the base algorithm (prior-guided runs go through ``covr train``).
One env runner in the driver process (``num_env_runners=0``): on a 2-core box more processes only add
contention. 1 torch thread by default (a box shared with other jobs); 2 on a quiet 2-core box.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _evaluate(policy: torch.nn.Module, env: Any, episodes: int, seed: int) -> float:
    returns = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = policy(torch.as_tensor(obs[None]))[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def _random_return(env: Any, episodes: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    returns = []
    for e in range(episodes):
        env.reset(seed=seed + e)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_rad_cartpole_swingup_climbs_well_above_random(ray_session: None) -> None:
    from covr_envs.registry import make_env_from_config
    from covr_ray.config import load_config
    from covr_ray.io import atomic_write_text
    from covr_ray.rl.algo import build_algorithm_config, learner_metrics, network_spec_for, policy_state_dict
    from covr_ray.rl.networks import build_policy

    steps = int(os.environ.get("COVR_LEARNING_STEPS", "2500"))
    batch = int(os.environ.get("COVR_LEARNING_BATCH", "64"))
    hidden = int(os.environ.get("COVR_LEARNING_HIDDEN", "256"))
    image = int(os.environ.get("COVR_LEARNING_IMAGE", "84"))
    starts = int(os.environ.get("COVR_LEARNING_STARTS", "1000"))
    device = os.environ.get("COVR_LEARNING_DEVICE", "cpu")
    eval_every = int(os.environ.get("COVR_LEARNING_EVAL_EVERY", "500"))
    eval_episodes = int(os.environ.get("COVR_LEARNING_EVAL_EPISODES", "2"))
    out = Path(os.environ.get("COVR_LEARNING_OUT", REPO / ".cache" / "test" / "learning_rad_cartpole.json"))
    torch.set_num_threads(int(os.environ.get("COVR_LEARNING_THREADS", "1")))
    cfg = load_config("dmc-cartpole-swingup", overrides=[
        "sac.base=rad", "prior.enabled=false", f"sac.batch_size={batch}", f"sac.hidden_dim={hidden}",
        f"env.image_size={image}", "ray.num_env_runners=0", f"device={device}",
        f"ray.num_gpus_learner={1 if device == 'cuda' else 0}",
        f"sac.learning_starts={starts}", "sac.rollout_fragment_length=8", "seed=1"])
    eval_env = make_env_from_config(cfg.env, seed=10_000)
    random_return = _random_return(eval_env, max(eval_episodes, 2), seed=10_000)
    print(json.dumps({"random_return": random_return}), flush=True)

    algo = build_algorithm_config(cfg).build_algo()
    curve: list[dict[str, float]] = []
    t0 = time.perf_counter()
    next_eval, final = eval_every, float("nan")
    try:
        agent_steps = 0
        while agent_steps < steps:
            metrics = learner_metrics(algo.train())
            agent_steps = int(metrics.get("rollout/agent_steps", agent_steps))
            if agent_steps >= next_eval or agent_steps >= steps:
                policy = build_policy(network_spec_for(algo), policy_state_dict(algo))
                final = _evaluate(policy, eval_env, eval_episodes, seed=20_000)
                curve.append({"agent_steps": agent_steps, "env_steps": agent_steps * cfg.env.action_repeat,
                              "eval_return": final,
                              "explore_return": metrics.get("rollout/episode_return_mean", float("nan")),
                              "critic_loss": metrics.get("learner/critic_loss", float("nan")),
                              "entropy": metrics.get("learner/entropy", float("nan")),
                              "wall_s": time.perf_counter() - t0})
                print(json.dumps(curve[-1]), flush=True)
                atomic_write_text(out, json.dumps({
                    "random_return": random_return, "batch": batch, "hidden": hidden, "image": image,
                    "threads": torch.get_num_threads(), "eval_episodes": eval_episodes, "curve": curve}, indent=1))
                next_eval += eval_every
    finally:
        algo.stop()
    assert final >= random_return + 100 and final >= 2 * random_return, (final, random_return)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rad_learns_the_pixel_dot_task_on_cpu(ray_session: None) -> None:
    """A CPU-sized learning check: from 24x24 pixels, steer a dot to the centre (support/dot_env.py's DotEnv).

    Random actions return about -14 per 20-step episode; moving straight to the centre about -3.
    Prints the curve; pass: the deterministic policy's return beats random by half the gap.
    """
    from ray.tune.registry import register_env

    from covr_ray.config import load_config
    from covr_ray.rl.algo import build_algorithm_config, learner_metrics, network_spec_for, policy_state_dict
    from covr_ray.rl.networks import build_policy
    from support.dot_env import DotEnv

    torch.set_num_threads(1)
    random_return = _random_return(DotEnv({"size": 24}), 20, seed=500)
    register_env("covr_dot", lambda config: DotEnv(config))
    cfg = load_config("smoke", overrides=[
        "sac.base=rad", "sac.augmentation_pad=2", "prior.enabled=false", "sac.batch_size=64", "sac.hidden_dim=128",
        "sac.num_filters=16", "sac.feature_dim=32", "sac.learning_starts=400", "sac.buffer_capacity=20000",
        "sac.gamma=0.95", "ray.num_env_runners=0", "seed=0"])
    algo = build_algorithm_config(cfg, env="covr_dot", env_config={"size": 24}).build_algo()
    curve, t0 = [], time.perf_counter()
    try:
        for i in range(1, 301):  # 8 agent steps and 8 updates per iteration
            metrics = learner_metrics(algo.train())
            if i % 50 == 0:
                policy = build_policy(network_spec_for(algo), policy_state_dict(algo))
                curve.append({"agent_steps": metrics["rollout/agent_steps"],
                              "eval_return": _evaluate(policy, DotEnv({"size": 24}), 10, seed=500),
                              "wall_s": time.perf_counter() - t0})
                print(json.dumps(curve[-1]), flush=True)
    finally:
        algo.stop()
    print(json.dumps({"random_return": random_return}))
    assert curve[-1]["eval_return"] > random_return + 0.5 * (-3.0 - random_return), (curve, random_return)
