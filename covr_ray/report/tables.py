"""The report's text outputs: paper-style number formatting, the Markdown tables and the CSV files."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from covr_ray.report.runs import RunRecord

RESULTS_COLUMNS = ["preset", "group", "config", "group_fields", "env", "n_runs", "seeds", "env_steps_min",
                   "env_steps_max", "return_mean", "return_std", "mean_ci_low", "mean_ci_high", "distance_m_mean",
                   "distance_m_std", "n_distance", "iqm_return", "iqm_ci_low", "iqm_ci_high", "base_group",
                   "p_improve", "p_improve_ci_low", "p_improve_ci_high", "paper_method", "paper_return_mean",
                   "paper_return_std", "paper_distance_m_mean", "paper_distance_m_std", "paper_table"]
AGGREGATE_COLUMNS = ["group", "n_presets", "n_runs", "presets", "iqm_return", "iqm_ci_low", "iqm_ci_high"]
RUNS_COLUMNS = ["run_dir", "preset", "group", "variant", "seed", "env", "env_steps", "return_mean", "distance_m",
                "source"]
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


def fmt_ci(point: Optional[float], low: Optional[float], high: Optional[float], prob: bool = False) -> str:
    """``"850 [800, 900]"`` (``prob``: two decimals, for probabilities)."""
    if point is None or low is None or high is None:
        return "-"
    f = (lambda x: f"{x:.2f}") if prob else fmt_num
    return f"{f(point)} [{f(low)}, {f(high)}]"


def _paper_cell(mean: Any, std: Any) -> str:
    if mean is None:
        return "-"
    return f"{mean:g} ± {std:g}" if std is not None else f"{mean:g}"


def _preset_section(preset: str, rows: list[dict[str, Any]], fields: list[str], group_by: Optional[str]) -> list[str]:
    env = rows[0]["env"]
    lines = [f"## {preset} ({env})", ""]
    if group_by:
        lines.append(f"Groups by `--group-by {group_by}` (other config differences are pooled).")
    elif fields:
        lines.append("Groups by the config fields that differ between this preset's runs: "
                     + ", ".join(f"`{f}`" for f in fields) + ".")
    else:
        lines.append("One group: the runs differ in their seeds only.")
    lines.append("")
    show_config = any(r["config"] and r["config"] != r["group"] for r in rows)
    show_dist = any(r["n_distance"] for r in rows)
    show_base = any(r["base_group"] is not None for r in rows)
    show_paper = any(r["paper_method"] for r in rows)
    header = (["group"] + (["config"] if show_config else []) + ["runs", "env steps", "episode return",
              "mean [95% CI]", "IQM [95% CI]"] + (["driving distance (m)"] if show_dist else [])
              + (["base", "P(> base) [95% CI]"] if show_base else []) + (["paper"] if show_paper else []))
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        steps = (str(row["env_steps_max"]) if row["env_steps_min"] == row["env_steps_max"]
                 else f"{row['env_steps_min']}-{row['env_steps_max']}")
        cells = [row["group"] or "all runs"] + ([row["config"] or "-"] if show_config else []) + [
            str(row["n_runs"]), steps, fmt_pm(row["return_mean"], row["return_std"]),
            fmt_ci(row["return_mean"], row["mean_ci_low"], row["mean_ci_high"]),
            fmt_ci(row["iqm_return"], row["iqm_ci_low"], row["iqm_ci_high"])]
        if show_dist:
            cells.append(fmt_pm(row["distance_m_mean"], row["distance_m_std"]))
        if show_base:
            cells += [row["base_group"] or "-", fmt_ci(row["p_improve"], row["p_improve_ci_low"],
                                                       row["p_improve_ci_high"], prob=True)]
        if show_paper:
            paper = "-"
            if row["paper_method"]:
                paper = f"{row['paper_method']}: {_paper_cell(row['paper_return_mean'], row['paper_return_std'])}"
                if row["paper_distance_m_mean"] is not None:
                    paper += f" ({_paper_cell(row['paper_distance_m_mean'], row['paper_distance_m_std'])} m)"
            cells.append(paper)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _paper_section(rows: list[dict[str, Any]]) -> list[str]:
    from covr_ray.report.groups import paper_scenario
    from covr_ray.report.summary import paper_pair

    lines: list[str] = []
    for preset in sorted({r["preset"] for r in rows}):
        found = paper_scenario(preset)
        if found is None:
            continue
        name, scenario = found
        ours = {r["paper_method"]: r["group"] or "all runs" for r in rows
                if r["preset"] == preset and r["paper_method"]}
        lines += [f"### {preset}: {scenario.get('table', name)}", "",
                  "| method | episode return | driving distance (m) | our group |", "|---|---|---|---|"]
        for prow in scenario["rows"]:
            ret = prow.get("return")
            dist = prow.get("distance_m")
            lines.append(f"| {prow['method']} | {_paper_cell(*paper_pair(ret))} | {_paper_cell(*paper_pair(dist))} | "
                         f"{ours.get(prow['method'], '-')} |")
        lines.append("")
    if lines:
        lines = ["## The paper's numbers", "",
                 "As reported in the paper (COVR, AAAI 2026); a row is matched to a group by its config "
                 "(covr_ray/report/paper_numbers.yaml).", ""] + lines
    return lines


def _run_name(path: Path, runs: list[RunRecord]) -> str:
    """The run directory relative to the directory holding every run (``covr/s0``), or its name."""
    import os

    root = os.path.commonpath([str(r.path.parent) for r in runs]) if runs else ""
    return os.path.relpath(path, root) if root else path.name


def markdown_report(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], runs: list[RunRecord],
                    skipped: list[tuple[Path, str]], group_by: Optional[str], reps: int,
                    fields_by_preset: Optional[dict[str, list[str]]] = None, seed: int = 0) -> str:
    """The tables as Markdown: one section per preset, the aggregate, the paper's numbers, every run."""
    fields_by_preset = fields_by_preset or {}
    lines = ["# COVR results", "",
             f"{len(runs)} runs; the final evaluation of each. Per group: episode return mean ± std over runs "
             "(seeds, population std); the mean and the IQM of the final returns with 95 % stratified-bootstrap "
             "intervals; P(> base), the probability that a run of the group scores above a run of its base "
             f"group, with its 95 % interval (rliable; {reps} bootstrap replicates, seed {seed}).", ""]
    for preset in sorted({r["preset"] for r in rows}):
        lines += _preset_section(preset, [r for r in rows if r["preset"] == preset],
                                 fields_by_preset.get(preset, []), group_by)
    if aggregate:
        lines += ["## Across presets (IQM of raw final returns, bootstrap stratified by preset)", "",
                  f"| {group_by or 'group'} | presets | runs | IQM return [95% CI] |", "|---|---|---|---|"]
        for a in aggregate:
            lines.append(f"| {a['group'] or 'all runs'} | {a['n_presets']} | {a['n_runs']} | "
                         f"{fmt_ci(a['iqm_return'], a['iqm_ci_low'], a['iqm_ci_high'])} |")
        lines.append("")
    lines += _paper_section(rows)
    lines += ["## Runs", "", "| run | preset | group | seed | env steps | return | distance (m) | source |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {_run_name(r.path, runs)} | {r.preset} | {r.group or 'all runs'} | {r.seed} | {r.env_steps} | "
                     f"{fmt_num(r.return_mean)} | {fmt_num(r.distance_m)} | {r.source} |")
    if skipped:
        lines += ["", "## Skipped runs", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in skipped]
    return "\n".join(lines) + "\n"


def report_texts(rows: list[dict[str, Any]], aggregate: list[dict[str, Any]], curves: list[dict[str, Any]],
                 runs: list[RunRecord], skipped: list[tuple[Path, str]], group_by: Optional[str],
                 reps: int, fields_by_preset: Optional[dict[str, list[str]]] = None,
                 seed: int = 0) -> dict[str, str]:
    """File name -> text of every table file: ``results.md``, ``results.csv``, ``aggregate.csv``,
    ``runs.csv``, ``curves.csv``."""
    fields_by_preset = fields_by_preset or {}
    result_rows = [dict(r, group_fields=" ".join(fields_by_preset.get(r["preset"], []))) for r in rows]
    return {
        "results.md": markdown_report(rows, aggregate, runs, skipped, group_by, reps, fields_by_preset, seed),
        "results.csv": csv_text(result_rows, RESULTS_COLUMNS),
        "aggregate.csv": csv_text(aggregate, AGGREGATE_COLUMNS),
        "runs.csv": csv_text([{"run_dir": str(r.path), "preset": r.preset, "group": r.group, "variant": r.variant,
                               "seed": r.seed, "env": r.env, "env_steps": r.env_steps, "return_mean": r.return_mean,
                               "distance_m": r.distance_m, "source": r.source} for r in runs], RUNS_COLUMNS),
        "curves.csv": csv_text(curves, CURVES_COLUMNS),
    }
