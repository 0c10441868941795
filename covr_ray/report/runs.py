"""Run discovery and each run's results: the final evaluation and the learning curve (:class:`RunRecord`).

Every path inside a run directory comes from :class:`covr_ray.run_dir.RunDir`. Runs made by ``covr sweep``
carry their variant name and the sweep's base variant, read from the ``sweep.json`` of a directory above
them (under ``RUNS_DIR``, or ``RUNS_DIR`` itself and its parents).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from covr_ray.errors import CheckpointError, ConfigError, CovrError, ReportError
from covr_ray.report.groups import check_group_key, group_label
from covr_ray.run_dir import RunDir
from covr_ray.sweep.state import SWEEP_FILE, SweepLabel, sweep_labels

RETURN_KEY = "eval/return_mean"
DISTANCE_KEY = "eval/distance_m_mean"


@dataclass
class RunRecord:
    """One run's results."""

    path: Path
    preset: str
    seed: int
    env: str
    group: str
    """Group label, set by :func:`covr_ray.report.groups.assign_groups`."""
    env_steps: int
    """Training env steps of the final evaluation."""
    return_mean: float
    """Final evaluation's mean episode return."""
    distance_m: Optional[float]
    """Final evaluation's mean driving distance (metres); None for non-driving envs."""
    source: str
    """Where the final numbers came from: ``eval json`` or ``metrics.csv``."""
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(env steps, eval return mean) points, sorted by steps."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's validated config as a nested dict (``CovrConfig.to_dict()``)."""
    variant: Optional[str] = None
    """Variant name, for a run made by ``covr sweep``."""
    base_variant: Optional[str] = None
    """The sweep's ``base_variant`` (None: not a sweep run, or the sweep named none)."""
    sweep: Optional[str] = None
    """Path of the ``sweep.json`` naming this run."""


def find_run_dirs(runs_dir: str | Path) -> list[Path]:
    """Directories under ``runs_dir`` (itself included) holding ``config.yaml``, sorted; not descending into
    a run directory once found.

    Raises:
        ReportError: ``runs_dir`` is not a directory.
    """
    return _scan(runs_dir)[0]


def _scan(runs_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """``(run directories, sweep.json files)`` under ``runs_dir`` (see :func:`find_run_dirs`)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ReportError(f"runs directory {root} does not exist or is not a directory")
    found: list[Path] = []
    sweeps: list[Path] = []
    stack = [root]
    while stack:
        current = stack.pop()
        if RunDir(current).config_path.is_file():
            found.append(current)
            continue
        if (current / SWEEP_FILE).is_file():
            sweeps.append(current / SWEEP_FILE)
        stack.extend(sorted((p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            reverse=True))
    return sorted(found), sorted(sweeps)


def find_sweep_labels(runs_dir: str | Path) -> tuple[dict[Path, SweepLabel], list[tuple[Path, str]]]:
    """Variant labels of the runs named by the ``sweep.json`` files under ``runs_dir`` and above it, keyed
    by resolved run directory; plus ``(path, reason)`` of each unreadable sweep file.

    Raises:
        ReportError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir).resolve()
    files = _scan(root)[1] + [d / SWEEP_FILE for d in root.parents if (d / SWEEP_FILE).is_file()]
    labels: dict[Path, SweepLabel] = {}
    bad: list[tuple[Path, str]] = []
    for path in files:
        try:
            labels.update(sweep_labels(path))
        except CovrError as exc:
            bad.append((path, str(exc)))
    return labels, bad


def _final_from_eval_files(run: RunDir) -> Optional[tuple[int, float, Optional[float], list[tuple[int, float]]]]:
    files = run.eval_results()
    if not files:
        return None
    series: list[tuple[int, float]] = []
    last: Optional[tuple[int, float, Optional[float]]] = None
    for steps, path in files:
        try:
            data = json.loads(path.read_text())
            ret = float(data["return_mean"])
            dist = float(data["distance_m_mean"]) if "distance_m_mean" in data else None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{path} is not an eval result (needs a numeric 'return_mean'): {exc}") from exc
        if not math.isfinite(ret) or (dist is not None and not math.isfinite(dist)):
            raise ReportError(f"{path} holds a non-finite return or distance")
        series.append((steps, ret))
        last = (steps, ret, dist)
    assert last is not None
    return last[0], last[1], last[2], series


def _by_step(rows: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """One finite value per step, sorted by step; of rows logged at one step the last in the file wins: a run
    resumed from a checkpoint logs the steps after it again, and its rows come after the stopped run's."""
    return sorted({int(s): float(v) for s, v in rows if math.isfinite(v)}.items())


def load_run(run_dir: str | Path, group_by: Optional[str] = None, label: Optional[SweepLabel] = None) -> RunRecord:
    """Read one run directory's config and results (``label``: its sweep variant, if any). The group label
    is ``group_by``'s value, or ``""`` until :func:`~covr_ray.report.groups.assign_groups` sets it.

    Raises:
        ReportError: no config or an unreadable one, no results (no eval files, no eval rows in
            metrics.csv), a malformed eval file or metrics.csv, or an unknown ``group_by`` key.
        ConfigError: ``config.yaml`` does not make a valid config.
    """
    from covr_ray.metrics import read_csv_metrics

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    try:
        cfg = run.read_config()
    except CheckpointError as exc:
        raise ReportError(str(exc)) from exc
    config = cfg.to_dict()
    group = group_label(config, group_by)  # checks group_by against this run's config
    metrics: dict[str, list[tuple[int, float]]] = {}
    metrics_path = run.metrics_csv
    if metrics_path.is_file():
        try:
            metrics = read_csv_metrics(metrics_path)
        except (KeyError, ValueError, csv.Error) as exc:
            raise ReportError(f"{metrics_path} is not a metrics.csv (step,key,value,time): {exc}") from exc
    curve = _by_step(metrics.get(RETURN_KEY, []))
    final = _final_from_eval_files(run)
    if final is not None:
        steps, ret, dist, series = final
        source = "eval json"
        curve = curve or series
    elif curve:
        steps, ret = curve[-1]
        dists = _by_step(metrics.get(DISTANCE_KEY, []))
        dist = dists[-1][1] if dists else None
        source = metrics_path.name
    else:
        raise ReportError(f"{run_dir} has no results: no eval/eval-<steps>.json and no {RETURN_KEY!r} rows "
                          "in metrics.csv (did the run reach its first evaluation?)")
    return RunRecord(path=run_dir, preset=cfg.preset, seed=int(cfg.seed), env=cfg.env.name, group=group,
                     env_steps=int(steps), return_mean=float(ret), distance_m=dist, source=source, curve=curve,
                     config=config, variant=label.variant if label else None,
                     base_variant=label.base_variant if label else None, sweep=label.sweep if label else None)


def collect_runs(runs_dir: str | Path, group_by: Optional[str] = None
                 ) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Load every run under ``runs_dir``; return ``(runs, skipped)`` with a reason per skipped run (and per
    unreadable ``sweep.json``, whose runs are then grouped by their config fields alone).

    An unknown ``group_by`` key is an error for the whole report, not a skip.
    """
    if group_by:
        check_group_key(group_by)
    labels, skipped = find_sweep_labels(runs_dir)
    runs: list[RunRecord] = []
    for run_dir in find_run_dirs(runs_dir):
        try:
            runs.append(load_run(run_dir, group_by, labels.get(run_dir.resolve())))
        except ReportError as exc:
            skipped.append((run_dir, str(exc)))
        except (ConfigError, CovrError, OSError) as exc:
            skipped.append((run_dir, f"{type(exc).__name__}: {exc}"))
    return runs, skipped
