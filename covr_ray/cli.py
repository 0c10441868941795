"""The ``covr`` command line.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; the
module is imported only when its command runs, so ``covr --help`` is instant. Command modules import
torch/ray inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from covr_ray.errors import CovrError

#: command -> (module, one-line help). The order is the order of ``covr --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("covr_ray.commands.train", "run the COVR loop on Ray: VLM-guided SAC + LoRA rounds (or --resume RUN_DIR)"),
    "presets": ("covr_ray.commands.presets", "list the shipped presets (one per scenario) with their key values"),
    "config": ("covr_ray.commands.config", "print the resolved config of a preset plus --set overrides, as YAML"),
    "make-tiny-vlm": ("covr_ray.vlm.tiny", "build a tiny random-weight VLM (Qwen2.5-VL by default) for tests and demos"),
    "ask": ("covr_ray.commands.ask", "ask a VLM (hub id or local path) about one image, in transformers or vLLM"),
    "bench": ("covr_ray.commands.bench", "run a benchmark and print its figures as JSON (see `covr bench --help`)"),
    "eval": ("covr_ray.commands.eval", "evaluate a run's policy network alone (or --actor vlm: the VLM per adapter) on its env"),
    "export": ("covr_ray.commands.export", "export a run's policy to ONNX or TorchScript with a verified manifest"),
    "report": ("covr_ray.commands.report", "tables (mean +- std, IQM with bootstrap CIs) and learning curves over runs"),
    "summary": ("covr_ray.commands.summary", "one run: policy evals vs random, the VLM's held-out fit per round, the VLM per adapter"),
    "probe": ("covr_ray.commands.probe", "how much of the RL action one frame shows: per kept set and on the policy's rollouts"),
    "sweep": ("covr_ray.commands.sweep", "run a grid of variants x seeds as covr train runs (local or Ray jobs), resumable"),
}

def _first_positional(argv: Sequence[str]) -> Optional[str]:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Top-level parser; only the selected command's module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="covr",
        description="COVR-Ray: a VLM and a pixel RL agent teach each other, on Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _first_positional(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``covr`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from covr_ray.log import setup_logging

    setup_logging()
    try:
        return int(args._run(args) or 0)
    except CovrError as exc:
        print(f"covr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
