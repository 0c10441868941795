"""``covr report RUNS_DIR [--out DIR] [--group-by KEY]``: tables and learning curves over runs.

    covr report runs/                       # group by preset
    covr report runs/ablation --group-by eddf.mode

Writes ``results.md``, ``results.csv``, ``aggregate.csv``, ``runs.csv``, ``curves.csv`` and
``curves/<preset>.png`` to ``RUNS_DIR/report`` (or ``--out``); see :mod:`covr_ray.report`.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", help="directory searched (recursively) for run directories")
    parser.add_argument("--out", default=None, help="output directory (default: RUNS_DIR/report)")
    parser.add_argument("--group-by", default=None,
                        help="dotted config key to split groups by within a preset (e.g. sac.base, eddf.mode)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replicates for the IQM intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--no-plots", action="store_true", help="skip the learning-curve PNGs")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.report import build_report

    summary = build_report(args.runs_dir, args.out, group_by=args.group_by, reps=args.reps, seed=args.seed,
                           plots=not args.no_plots)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    md = [f for f in summary["files"] if f.endswith("results.md")][0]
    with open(md, encoding="utf-8") as fh:
        sys.stdout.write(fh.read())
    print(f"\n{len(summary['runs'])} runs, {len(summary['skipped'])} skipped; files in {summary['out_dir']}")
    return 0
