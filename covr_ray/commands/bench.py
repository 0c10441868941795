"""``covr bench NAME``: run one benchmark and print its figures as one JSON object on stdout.

Bench modules keep torch/ray imports inside ``run`` so listing them stays cheap.
"""

from __future__ import annotations

import argparse
import importlib

from covr_ray.cli import BENCHES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, help_text) in BENCHES.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)


def print_figures(figures: dict, as_json: bool) -> None:
    """A benchmark's result: one JSON object (``--json``) or one aligned ``key: value`` line per figure."""
    import json

    if as_json:
        print(json.dumps(figures))
        return
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")
