"""``covr summary RUN_DIR [--json]``: one run's story in both directions (:mod:`covr_ray.report.run_summary`):
the policy's evaluations against the random level, the VLM's held-out fit per round, the VLM as a policy
per adapter version."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds config.yaml)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.report.run_summary import format_run_summary, run_summary

    summary = run_summary(args.run_dir)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        sys.stdout.write(format_run_summary(summary))
    return 0
