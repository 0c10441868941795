"""The report's text outputs: paper-style number formatting, the Markdown tables and the CSV files."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from covr_ray.report.runs import RunRecord

RESULTS_COLUMNS = ["preset", "group", "env", "n_runs", "seeds", "env_steps_min", "env_steps_max", "return_mean",
                   "return_std", "distance_m_mean", "distance_m_std", "n_distance", "iqm_return", "iqm_ci_low",
                   "iqm_ci_high"]
AGGREGATE_COLUMNS = ["group", "n_presets", "n_runs", "presets", "iqm_return", "iqm_ci_low", "iqm_ci_high"]
RUNS_COLUMNS = ["run_dir", "preset", "group", "seed", "env", "env_steps", "return_mean", "distance_m", "source"]
CURVES_COLUMNS = ["preset", "group", "env_steps", "return_mean", "return_std", "n_runs"]


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


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """``rows`` as CSV with a header of ``columns`` (None as an empty cell, other keys ignored)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


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


def report_texts(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], curves: list[dict[str, Any]],
                 runs: list[RunRecord], skipped: list[tuple[Path, str]], group_by: Optional[str],
                 reps: int) -> dict[str, str]:
    """File name -> text of every table file: ``results.md``, ``results.csv``, ``aggregate.csv``,
    ``runs.csv``, ``curves.csv``."""
    return {
        "results.md": markdown_report(rows, aggregate, runs, skipped, group_by, reps),
        "results.csv": csv_text(rows, RESULTS_COLUMNS),
        "aggregate.csv": csv_text(aggregate, AGGREGATE_COLUMNS),
        "runs.csv": csv_text([{"run_dir": str(r.path), "preset": r.preset, "group": r.group, "seed": r.seed,
                               "env": r.env, "env_steps": r.env_steps, "return_mean": r.return_mean,
                               "distance_m": r.distance_m, "source": r.source} for r in runs], RUNS_COLUMNS),
        "curves.csv": csv_text(curves, CURVES_COLUMNS),
    }
