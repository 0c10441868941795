"""``covr probe RUN_DIR [--episodes N] [--json]``: how much of the RL action one frame shows, per kept set
and on the final policy's rollouts (:mod:`covr_ray.report.frame_probe`)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds config.yaml, rounds/, policy/)")
    parser.add_argument("--episodes", type=int, default=0,
                        help="also roll the policy network for this many episodes and probe its actions (0: no)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the rollouts' episode 0 (default: run seed + 100000, as covr eval)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.report.frame_probe import format_probe, probe_run

    report = probe_run(args.run_dir, episodes=args.episodes, seed=args.seed)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        sys.stdout.write(format_probe(report))
    return 0
