"""``covr report RUNS_DIR``: paper-style tables and learning curves over the runs under a directory.

    covr report runs/ --group-by sac.base          # -> runs/report/{results.md, results.csv, ...}

A run directory is any directory holding ``config.yaml`` (written by ``covr train``); its results are

- the *final evaluation*: the ``eval/eval-<env_steps>.json`` with the largest ``env_steps`` (its
  ``return_mean`` and, for driving, ``distance_m_mean``); a run without eval files falls back to the last
  ``eval/return_mean`` / ``eval/distance_m_mean`` rows of its ``metrics.csv`` (the ``source`` column says
  which was used); a run with neither is listed as skipped, with the reason;
- the *learning curve*: the ``eval/return_mean`` rows of ``metrics.csv`` against env steps (or, without
  them, the eval JSON files).

Runs are grouped by preset and, with ``--group-by KEY`` (a dotted config key such as ``sac.base``,
``eddf.mode`` or ``sac.lam``), by that key's value too. For each group the report gives mean +- std over
runs (seeds) of the final return and driving distance, as the paper's tables do, plus the IQM of the final
returns with a 95 % stratified-bootstrap interval (:mod:`covr_ray.stats`). Across presets, each group value
also gets one aggregate IQM, stratified by preset (raw returns: meaningful when the presets share a score
scale, e.g. the DMControl tasks' 0..1000).

Outputs (each written atomically) in ``--out`` (default ``RUNS_DIR/report``): ``results.md`` (the tables),
``results.csv`` (one row per preset x group), ``aggregate.csv``, ``runs.csv`` (one row per run),
``curves.csv`` (mean, std and run count per env step) and ``curves/<preset>.png`` (mean +- std band over
runs, one line per group).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from covr_ray.errors import ConfigError, CovrError, ReportError
from covr_ray.io import atomic_write_bytes, atomic_write_text
from covr_ray.log import get_logger
from covr_ray.stats import iqm, mean_std, stratified_bootstrap_ci

log = get_logger(__name__)

RETURN_KEY = "eval/return_mean"
DISTANCE_KEY = "eval/distance_m_mean"
_EVAL_FILE = re.compile(r"^eval-(\d+)\.json$")


@dataclass
class RunRecord:
    """One run's results."""

    path: Path
    preset: str
    seed: int
    env: str
    group: str
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


def find_run_dirs(runs_dir: str | Path) -> list[Path]:
    """Directories under ``runs_dir`` (itself included) holding ``config.yaml``, sorted; not descending into
    a run directory once found.

    Raises:
        ReportError: ``runs_dir`` is not a directory.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ReportError(f"runs directory {root} does not exist or is not a directory")
    found: list[Path] = []
    stack = [root]
    while stack:
        current = stack.pop()
        if (current / "config.yaml").is_file():
            found.append(current)
            continue
        stack.extend(sorted((p for p in current.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            reverse=True))
    return sorted(found)


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (``sac.base``) of a config dict.

    Raises:
        ReportError: the key does not exist in this config, naming the keys available at the failing level.
    """
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            options = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise ReportError(f"--group-by {key!r}: {where} has no key {part!r}; available: {options}")
        node = node[part]
    return node


def _label(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _final_from_eval_files(run_dir: Path) -> Optional[tuple[int, float, Optional[float], list[tuple[int, float]]]]:
    files = []
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        for path in eval_dir.iterdir():
            match = _EVAL_FILE.match(path.name)
            if match:
                files.append((int(match.group(1)), path))
    if not files:
        return None
    series: list[tuple[int, float]] = []
    last: Optional[tuple[int, float, Optional[float]]] = None
    for steps, path in sorted(files):
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


def load_run(run_dir: str | Path, group_by: Optional[str] = None) -> RunRecord:
    """Read one run directory's config and results.

    Raises:
        ReportError: no results (no eval files, no eval rows in metrics.csv), a malformed eval file or
            metrics.csv, or an unknown ``group_by`` key.
        ConfigError: ``config.yaml`` does not make a valid config.
    """
    from covr_ray.config import config_from_dict
    from covr_ray.metrics import read_csv_metrics

    run_dir = Path(run_dir)
    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    except yaml.YAMLError as exc:
        raise ReportError(f"{run_dir}/config.yaml is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ReportError(f"{run_dir}/config.yaml does not hold a config mapping")
    cfg = config_from_dict(raw)
    cfg_dict = cfg.to_dict()
    group = _label(config_value(cfg_dict, group_by)) if group_by else ""
    metrics: dict[str, list[tuple[int, float]]] = {}
    metrics_path = run_dir / "metrics.csv"
    if metrics_path.is_file():
        try:
            metrics = read_csv_metrics(metrics_path)
        except (KeyError, ValueError, csv.Error) as exc:
            raise ReportError(f"{metrics_path} is not a metrics.csv (step,key,value,time): {exc}") from exc
    curve = sorted((int(s), float(v)) for s, v in metrics.get(RETURN_KEY, []) if math.isfinite(v))
    final = _final_from_eval_files(run_dir)
    if final is not None:
        steps, ret, dist, series = final
        source = "eval json"
        curve = curve or series
    elif curve:
        steps, ret = curve[-1]
        dists = sorted((int(s), float(v)) for s, v in metrics.get(DISTANCE_KEY, []) if math.isfinite(v))
        dist = dists[-1][1] if dists else None
        source = "metrics.csv"
    else:
        raise ReportError(f"{run_dir} has no results: no eval/eval-<steps>.json and no {RETURN_KEY!r} rows "
                          "in metrics.csv (did the run reach its first evaluation?)")
    return RunRecord(path=run_dir, preset=cfg.preset, seed=int(cfg.seed), env=cfg.env.name, group=group,
                     env_steps=int(steps), return_mean=float(ret), distance_m=dist, source=source, curve=curve)


def collect_runs(runs_dir: str | Path, group_by: Optional[str] = None
                 ) -> tuple[list[RunRecord], list[tuple[Path, str]]]:
    """Load every run under ``runs_dir``; return ``(runs, skipped)`` with a reason per skipped run.

    An unknown ``group_by`` key is an error for the whole report, not a skip.
    """
    if group_by:
        check_group_key(group_by)
    runs: list[RunRecord] = []
    skipped: list[tuple[Path, str]] = []
    for run_dir in find_run_dirs(runs_dir):
        try:
            runs.append(load_run(run_dir, group_by))
        except ReportError as exc:
            skipped.append((run_dir, str(exc)))
        except (ConfigError, CovrError, OSError) as exc:
            skipped.append((run_dir, f"{type(exc).__name__}: {exc}"))
    return runs, skipped


def check_group_key(key: str) -> None:
    """Refuse a ``--group-by`` key that no config can have. Keys inside open-ended mappings
    (``env.kwargs.<name>``) are accepted; runs lacking them are then skipped with the reason.

    Raises:
        ReportError: naming the key and the keys available where it failed.
    """
    from covr_ray.config import CovrConfig

    node: Any = CovrConfig().to_dict()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and not node and i > 0:
            return  # an open-ended mapping such as env.kwargs
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:i]) or "the config"
            options = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise ReportError(f"--group-by {key!r}: {where} has no key {part!r}; available: {options}")
        node = node[part]


def _decimals(x: float) -> int:
    return 0 if abs(x) >= 100 else 1 if abs(x) >= 1 else 3


def fmt_num(x: Optional[float]) -> str:
    """Paper-style rounding: integers from 100 up, one decimal from 1, else three decimals."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{_decimals(x)}f}"


def fmt_pm(mean: Optional[float], std: Optional[float]) -> str:
    """``"872 ± 2"``: mean and std with the mean's number of decimals."""
    if mean is None or std is None or not math.isfinite(mean):
        return "-"
    d = _decimals(mean)
    return f"{mean:.{d}f} ± {std:.{d}f}"


def summarize_groups(runs: list[RunRecord], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (preset, group): counts, mean/std of final return and distance, IQM + 95 % CI."""
    rows = []
    keys = sorted({(r.preset, r.group) for r in runs})
    for preset, group in keys:
        members = [r for r in runs if r.preset == preset and r.group == group]
        returns = [r.return_mean for r in members]
        dists = [r.distance_m for r in members if r.distance_m is not None]
        ret_mean, ret_std = mean_std(returns)
        point, low, high = stratified_bootstrap_ci([returns], iqm, reps=reps, seed=seed)
        row: dict[str, Any] = {
            "preset": preset, "group": group, "env": members[0].env, "n_runs": len(members),
            "seeds": " ".join(str(s) for s in sorted(r.seed for r in members)),
            "env_steps_min": min(r.env_steps for r in members), "env_steps_max": max(r.env_steps for r in members),
            "return_mean": ret_mean, "return_std": ret_std, "iqm_return": point, "iqm_ci_low": low,
            "iqm_ci_high": high, "distance_m_mean": None, "distance_m_std": None, "n_distance": len(dists),
        }
        if dists:
            row["distance_m_mean"], row["distance_m_std"] = mean_std(dists)
        rows.append(row)
    return rows


def aggregate_groups(runs: list[RunRecord], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per group value over all its presets: IQM of final returns, stratified bootstrap by preset.
    Only groups spanning more than one preset get a row."""
    rows = []
    for group in sorted({r.group for r in runs}):
        presets = sorted({r.preset for r in runs if r.group == group})
        if len(presets) < 2:
            continue
        strata = [[r.return_mean for r in runs if r.group == group and r.preset == p] for p in presets]
        point, low, high = stratified_bootstrap_ci(strata, iqm, reps=reps, seed=seed)
        rows.append({"group": group, "n_presets": len(presets), "n_runs": sum(len(s) for s in strata),
                     "presets": " ".join(presets), "iqm_return": point, "iqm_ci_low": low, "iqm_ci_high": high})
    return rows


def align_curves(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of curves sampled at different steps.

    Each curve is linearly interpolated onto the union of all curves' steps, only inside its own step range
    (no extrapolation). Returns ``(steps, mean, std, count)``, each ``(K,)``; ``count`` is the number of
    runs covering the step; ``std`` is the population std (0 where one run covers the step).
    """
    curves = [c for c in curves if c]
    if not curves:
        return (np.zeros(0, np.int64),) + (np.zeros(0),) * 3  # type: ignore[return-value]
    steps = np.unique(np.concatenate([np.asarray([s for s, _ in c], np.int64) for c in curves]))
    grid = np.full((len(curves), steps.size), np.nan)
    for i, c in enumerate(curves):
        xs = np.asarray([s for s, _ in c], np.float64)
        ys = np.asarray([v for _, v in c], np.float64)
        inside = (steps >= xs.min()) & (steps <= xs.max())
        grid[i, inside] = np.interp(steps[inside], xs, ys)
    count = np.sum(~np.isnan(grid), axis=0)
    mean = np.nanmean(grid, axis=0)
    std = np.nanstd(grid, axis=0)
    return steps, mean, std, count.astype(np.int64)


def curve_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """Aligned learning curves per (preset, group): rows of preset, group, env_steps, mean, std, n_runs."""
    rows = []
    for preset, group in sorted({(r.preset, r.group) for r in runs}):
        steps, mean, std, count = align_curves([r.curve for r in runs if r.preset == preset and r.group == group])
        for s, m, d, n in zip(steps, mean, std, count):
            rows.append({"preset": preset, "group": group, "env_steps": int(s), "return_mean": float(m),
                         "return_std": float(d), "n_runs": int(n)})
    return rows


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "preset"


def plot_curves(runs: list[RunRecord], out_dir: Path, group_by: Optional[str]) -> list[Path]:
    """One PNG per preset: mean +- std band over runs of ``eval/return_mean`` vs env steps, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for preset in sorted({r.preset for r in runs}):
        fig = Figure(figsize=(6.0, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        drawn = False
        for group in sorted({r.group for r in runs if r.preset == preset}):
            members = [r for r in runs if r.preset == preset and r.group == group]
            steps, mean, std, _count = align_curves([r.curve for r in members])
            if steps.size == 0:
                continue
            label = f"{group_by}={group} (n={len(members)})" if group_by else f"n={len(members)}"
            line, = ax.plot(steps, mean, marker="o" if steps.size < 3 else None, label=label)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.2, color=line.get_color())
            drawn = True
        if not drawn:
            continue
        ax.set_title(preset)
        ax.set_xlabel("env steps")
        ax.set_ylabel("eval episode return")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        path = out_dir / "curves" / f"{_safe_name(preset)}.png"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def markdown_report(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], runs: list[RunRecord],
                    skipped: list[tuple[Path, str]], group_by: Optional[str], reps: int) -> str:
    """The tables as Markdown."""
    gcol = [f"{group_by}"] if group_by else []
    lines = ["# COVR results", "",
             f"{len(runs)} runs; final evaluation of each run; mean +- std over runs (seeds, population std); "
             f"IQM of final returns with a 95 % stratified-bootstrap interval ({reps} replicates).", "",
             "| preset | " + " | ".join(gcol + ["runs", "env steps", "episode return", "driving distance (m)",
                                               "IQM return [95% CI]"]) + " |",
             "|" + "---|" * (6 + len(gcol))]
    for row in rows:
        steps = (str(row["env_steps_max"]) if row["env_steps_min"] == row["env_steps_max"]
                 else f"{row['env_steps_min']}-{row['env_steps_max']}")
        dist = fmt_pm(row["distance_m_mean"], row["distance_m_std"])
        cells = [row["preset"]] + ([row["group"]] if group_by else []) + [
            str(row["n_runs"]), steps, fmt_pm(row["return_mean"], row["return_std"]), dist,
            f"{fmt_num(row['iqm_return'])} [{fmt_num(row['iqm_ci_low'])}, {fmt_num(row['iqm_ci_high'])}]"]
        lines.append("| " + " | ".join(cells) + " |")
    if aggregate:
        lines += ["", "## Across presets (IQM of raw final returns, bootstrap stratified by preset)", "",
                  f"| {group_by or 'group'} | presets | runs | IQM return [95% CI] |", "|---|---|---|---|"]
        for a in aggregate:
            lines.append(f"| {a['group'] or 'all'} | {a['n_presets']} | {a['n_runs']} | {fmt_num(a['iqm_return'])} "
                         f"[{fmt_num(a['iqm_ci_low'])}, {fmt_num(a['iqm_ci_high'])}] |")
    lines += ["", "## Runs", "", "| run | preset | seed | " + (f"{group_by} | " if group_by else "")
              + "env steps | return | distance (m) | source |", "|" + "---|" * (7 + len(gcol))]
    for r in runs:
        lines.append(f"| {r.path.name} | {r.preset} | {r.seed} | " + (f"{r.group} | " if group_by else "")
                     + f"{r.env_steps} | {fmt_num(r.return_mean)} | {fmt_num(r.distance_m)} | {r.source} |")
    if skipped:
        lines += ["", "## Skipped runs", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in skipped]
    return "\n".join(lines) + "\n"


def build_report(runs_dir: str | Path, out_dir: Optional[str | Path] = None, group_by: Optional[str] = None,
                 reps: int = 2000, seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Scan ``runs_dir``, write every output file, and return ``{"rows", "aggregate", "runs", "skipped",
    "files"}`` (rows as dicts, file paths as strings).

    Raises:
        ReportError: no run with results, an unknown ``group_by`` key, bad ``reps``.
    """
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir / "report"
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ReportError(f"--reps {reps!r} must be an integer >= 1")
    runs, skipped = collect_runs(runs_dir, group_by)
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    if not runs:
        found = len(skipped)
        raise ReportError(f"no run with results under {runs_dir} ({found} run director{'y' if found == 1 else 'ies'} "
                          "skipped); a run directory holds config.yaml plus eval/eval-<steps>.json or eval rows "
                          "in metrics.csv")
    rows = summarize_groups(runs, reps, seed)
    aggregate = aggregate_groups(runs, reps, seed)
    curves = curve_rows(runs)
    files = {
        "results.md": markdown_report(rows, aggregate, runs, skipped, group_by, reps),
        "results.csv": _csv_text(rows, ["preset", "group", "env", "n_runs", "seeds", "env_steps_min",
                                        "env_steps_max", "return_mean", "return_std", "distance_m_mean",
                                        "distance_m_std", "n_distance", "iqm_return", "iqm_ci_low", "iqm_ci_high"]),
        "aggregate.csv": _csv_text(aggregate, ["group", "n_presets", "n_runs", "presets", "iqm_return",
                                               "iqm_ci_low", "iqm_ci_high"]),
        "runs.csv": _csv_text([{"run_dir": str(r.path), "preset": r.preset, "group": r.group, "seed": r.seed,
                                "env": r.env, "env_steps": r.env_steps, "return_mean": r.return_mean,
                                "distance_m": r.distance_m, "source": r.source} for r in runs],
                              ["run_dir", "preset", "group", "seed", "env", "env_steps", "return_mean",
                               "distance_m", "source"]),
        "curves.csv": _csv_text(curves, ["preset", "group", "env_steps", "return_mean", "return_std", "n_runs"]),
    }
    written = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    if plots:
        written += plot_curves(runs, out, group_by)
    return {"rows": rows, "aggregate": aggregate, "runs": [str(r.path) for r in runs],
            "skipped": [(str(p), reason) for p, reason in skipped], "files": [str(p) for p in written],
            "out_dir": str(out)}
