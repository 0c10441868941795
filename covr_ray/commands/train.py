"""``covr train``: run the whole COVR loop on Ray (new run or ``--resume RUN_DIR``).

How to run::

    covr train --preset smoke                                   # tiny VLM, CPU, a few minutes
    covr train --preset dmc-cartpole-swingup --seed 0            # local Ray, GPU shares from the preset
    ray job submit --working-dir . -- covr train --preset carla-hw --address auto
    covr train --resume runs/smoke-s0-20261121-120000           # continue a stopped or crashed run

Bad input fails before anything starts: the paths the config names (``prior.model``, ``run_dir``, ...) are
checked before the run directory is made and Ray is started, and the run's CPU/GPU asks right after
``ray.init`` (:mod:`covr_ray.preflight`).

Progress: a tqdm bar on a terminal; elsewhere (``ray job submit``/``ray job logs``, a log file) one line
every ``--progress-every`` seconds, ``covr_ray.progress: env steps 152/300 (51%), 6.9 steps/s, ETA 0:00:21,
round 1, adapter v1, lambda 2``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="driving-hw", help="preset name or path to a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set sac.lam=2.0 (repeatable)")
    parser.add_argument("--seed", type=int, help="shortcut for --set seed=S")
    parser.add_argument("--run-dir", help="output directory (default runs/<preset>-s<seed>-<time>)")
    parser.add_argument("--address", help="Ray address to join: auto, ray://host:10001 (default: local Ray)")
    parser.add_argument("--vlm", help="shortcut for --set prior.model=MODEL (hub id or local path)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (progress log lines instead, see --progress-every)")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="without a progress bar (stderr not a terminal, or --no-progress): log one "
                             "progress line every SECONDS (default 30; 0: none)")
    parser.add_argument("--json", action="store_true", help="print the final summary as JSON")


def run(args: argparse.Namespace) -> int:
    from covr_ray.config import load_config
    from covr_ray.errors import ConfigError
    from covr_ray.log import ProgressLog
    from covr_ray.loop.orchestrator import CovrRun
    from covr_ray.preflight import check_paths

    # tqdm on a terminal only: in `ray job logs` or a file its carriage-return updates are one endless line
    bar = not args.no_progress and bool(getattr(sys.stderr, "isatty", lambda: False)())

    if args.resume:
        if args.overrides or args.seed is not None or args.vlm or args.run_dir:
            raise ConfigError("--resume", args.resume, "no --set/--seed/--vlm/--run-dir with --resume",
                              hint="a resumed run keeps the config saved in its run directory")
        job = CovrRun.resume(args.resume, progress=bar)
        if args.address:
            job.cfg.ray.address = args.address
    else:
        overrides = list(args.overrides)
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.vlm:
            overrides.append(f"prior.model={args.vlm}")
        if args.run_dir:
            overrides.append(f"run_dir={args.run_dir}")
        if args.address:
            overrides.append(f"ray.address={args.address}")
        cfg = load_config(args.preset, overrides)
        check_paths(cfg)  # before the run directory is made and Ray starts
        job = CovrRun.new(cfg, progress=bar)
    try:
        job.setup()
        if bar or args.progress_every <= 0:
            summary = job.run()
        else:
            with ProgressLog(ProgressLine(job), args.progress_every):
                summary = job.run()
    finally:
        job.close()
    root = job.run_dir.root
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        ev = summary.get("eval") or {}
        print(f"\nrun directory : {root}\nconfig        : {job.run_dir.config_path}\n"
              f"checkpoint    : {job.run_dir.latest_checkpoint()}\npolicy        : {job.run_dir.policy}\n"
              f"adapters      : {job.run_dir.adapters} (newest v{summary['adapter_version']})\n"
              f"metrics       : {job.run_dir.metrics_csv}, {job.run_dir.tensorboard}, {job.run_dir.wandb}\n"
              f"env steps     : {summary['env_steps']} in {summary['wall_s']:.0f} s, {summary['rounds']} rounds\n"
              f"final eval    : {ev.get('return_mean', float('nan')):.2f} +- {ev.get('return_std', float('nan')):.2f}")
    return 0


class ProgressLine:
    """``describe()`` of :class:`covr_ray.log.ProgressLog` for a :class:`~covr_ray.loop.orchestrator.CovrRun`:
    env steps, rate and ETA over the last interval, round, adapter version, lambda. Reads plain attributes
    of the run only (it is called from the progress thread)."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.total = int(job.cfg.schedule.total_env_steps)
        self._last = (time.monotonic(), int(job.env_steps))

    def __call__(self) -> str:
        job = self.job
        now, steps = time.monotonic(), int(job.env_steps)
        rate = (steps - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, steps)
        left = max(self.total - steps, 0)
        eta = datetime.timedelta(seconds=round(left / rate)) if left and rate > 0 else "?" if left else "0:00:00"
        return (f"env steps {steps}/{self.total} ({100.0 * steps / max(self.total, 1):.0f}%), {rate:.1f} steps/s, "
                f"ETA {eta}, round {job.schedule.round}, adapter v{job.adapter_version}, "
                f"lambda {job.current_lambda():.3g}")
