"""``covr presets``: list the shipped presets with the values that differ between scenarios."""

from __future__ import annotations

import argparse

from covr_ray.config import available_presets, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print only the names, one per line")


def run(args: argparse.Namespace) -> int:
    names = available_presets()
    if args.names:
        print("\n".join(names))
        return 0
    header = f"{'preset':24} {'env':26} {'repeat':>6} {'lambda':>6} {'cold':>4} {'lora a':>6} {'env steps':>9}"
    print(header)
    print("-" * len(header))
    for name in names:
        c = load_config(name)
        print(f"{name:24} {c.env.name:26} {c.env.action_repeat:>6} {c.sac.lam:>6g} "
              f"{c.schedule.cold_start_rounds:>4} {c.lora.alpha:>6g} {c.schedule.total_env_steps:>9}")
    return 0
