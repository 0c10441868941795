"""``covr sweep SPEC.yaml``: run a grid of variants x seeds as ``covr train`` runs, resumably.

How to run::

    covr sweep cluster/sweeps/covr_vs_base.yaml --out runs/covr_vs_base          # local, one run at a time
    covr sweep spec.yaml --out runs/x --dry-run                                   # validate, print the plan
    covr sweep spec.yaml --out /shared/runs/x --mode jobs --address http://HEAD:8265 \\
        --runtime-env cluster/runtime_env.yaml --max-parallel 4                  # Ray jobs on a cluster
    covr report runs/covr_vs_base                                                # one row per variant

Running the same command again skips finished runs, resumes crashed ones (``covr train --resume``) and
starts missing ones. With the spec's ``vlm_eval``, each finished run with the prior enabled and adapters
then gets ``covr eval RUN_DIR --actor vlm --adapter all`` (:mod:`covr_ray.sweep.vlm_stage`), skipped when
its ``eval/vlm-v<N>.json`` are already there. One progress line per change of a run (state, env steps, eval
return), plain lines for ``ray job logs`` and log files. Exit code 0 when every run is done (and every VLM
evaluation done or skipped), 1 when some failed (run the sweep again to resume them), 2 on bad input
(nothing started). The spec format: :mod:`covr_ray.sweep.spec`;
docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="sweep spec YAML: preset, seeds, variants (name -> --set list), base_variant, "
                                     "common, total_env_steps, vlm_eval")
    parser.add_argument("--out", default=None,
                        help="output directory: <out>/<variant>/s<seed> per run, <out>/sweep.json "
                             "(default: runs/<spec file name>)")
    parser.add_argument("--mode", choices=["local", "jobs"], default="local",
                        help="local: covr train subprocesses on this machine; jobs: Ray jobs (ray job submit)")
    parser.add_argument("--address", default=None,
                        help="local: the Ray cluster each covr train joins (default: each starts its own local "
                             "Ray); jobs: the Ray job server, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    parser.add_argument("--max-parallel", type=int, default=1,
                        help="runs (covr train or a VLM evaluation) at a time (default 1: one run uses a small "
                             "machine whole)")
    parser.add_argument("--retries", type=int, default=0,
                        help="resume a run (or rerun a VLM evaluation) that fails up to N more times within this "
                             "invocation (default 0)")
    parser.add_argument("--runtime-env", default=None, metavar="YAML",
                        help="jobs: the jobs' runtime env (e.g. cluster/runtime_env.yaml)")
    parser.add_argument("--poll-s", type=float, default=2.0, help="seconds between polls of the running runs")
    parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                        help="at most one env-steps line per run every SECONDS (state changes print at once)")
    parser.add_argument("--stall-timeout-s", type=float, default=3600.0,
                        help="stop a run whose metrics.csv has not grown for this long (0: never); it counts "
                             "as failed and is resumed by the next sweep")
    parser.add_argument("--request-timeout-s", type=float, default=60.0,
                        help="jobs: bound on every call to the Ray job server")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print what would run (covr train and covr eval commands); start nothing")
    parser.add_argument("--json", action="store_true", help="print the final summary as one JSON object")


def _runtime_env(path: Any) -> Any:
    import yaml

    from covr_ray.errors import ConfigError

    if path is None:
        return None
    try:
        data = yaml.safe_load(open(path, encoding="utf-8").read())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("--runtime-env", path, "a readable YAML runtime env (e.g. cluster/runtime_env.yaml)",
                          hint=str(exc)) from exc
    if not isinstance(data, dict):
        raise ConfigError("--runtime-env", path, "a YAML mapping (working_dir, env_vars, ...)")
    return data


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from covr_ray.sweep.backends import JobsBackend, LocalBackend
    from covr_ray.sweep.runner import Sweep, print_plan
    from covr_ray.sweep.spec import load_spec

    spec = load_spec(args.spec)
    out = Path(args.out) if args.out else Path("runs") / Path(args.spec).stem
    if args.mode == "local":
        if args.runtime_env:
            from covr_ray.errors import ConfigError

            raise ConfigError("--runtime-env", args.runtime_env, "only with --mode jobs")
        backend: Any = LocalBackend(address=args.address)
    else:
        backend = JobsBackend(args.address, _runtime_env(args.runtime_env), request_timeout_s=args.request_timeout_s)
    sweep = Sweep(spec, out, backend, max_parallel=args.max_parallel, retries=args.retries, poll_s=args.poll_s,
                  progress_every_s=args.progress_every, stall_timeout_s=args.stall_timeout_s,
                  check_paths=args.mode == "local")
    sweep.prepare()  # every check, before anything starts
    if args.dry_run:
        print_plan(sweep)
        return 0

    def terminate(signum: int, _frame: Any) -> None:  # `ray job stop`, kill: stop the runs cleanly
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = sweep.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"report: covr report {sweep.out}", file=sys.stdout)
    return 0 if summary["failed"] == 0 and summary.get("vlm_failed", 0) == 0 else 1
