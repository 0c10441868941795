"""``covr bench env``: agent steps per second of one env under random actions.

    covr bench env --env dmc:cartpole-swingup --steps 200 --json
    {"env": "dmc:cartpole-swingup", "steps_per_s": 30.1, "ms_per_step": 33.2}

A step is one agent step (the env's action repeat included) with rendering and frame stacking, as the
RL env runners see it. Resets are not timed; the env is reset when an episode ends.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from covr_ray.bench import print_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="driving-hw", help="env name (covr_envs.list_envs() or gym:<id>)")
    parser.add_argument("--steps", type=int, default=200, help="agent steps to time (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--action-repeat", type=int, default=None, help="default: the env's standard one")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def bench_env(name: str, steps: int, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Time ``steps`` random-action steps of env ``name``; returns ``{"env", "steps_per_s", "ms_per_step"}``."""
    from covr_envs import make_env
    from covr_ray.errors import ConfigError

    if steps < 1:
        raise ConfigError("--steps", steps, "an integer >= 1")
    env = make_env(name, seed, **{k: v for k, v in overrides.items() if v is not None})
    try:
        env.reset()
        elapsed = 0.0
        for _ in range(steps):
            action = env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            elapsed += time.perf_counter() - start
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    return {"env": name, "steps_per_s": round(steps / elapsed, 2), "ms_per_step": round(1000.0 * elapsed / steps, 2)}


def run(args: argparse.Namespace) -> int:
    result = bench_env(args.env, args.steps, seed=args.seed, image_size=args.image_size,
                       action_repeat=args.action_repeat)
    print_figures(result, args.json)
    return 0
