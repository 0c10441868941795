"""``covr config``: print a resolved config (preset + overrides) as YAML, or fail naming the bad field."""

from __future__ import annotations

import argparse

import yaml

from covr_ray.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="driving-hw", help="preset name or path to a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set sac.lam=2.0 (repeatable)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.preset, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0
