"""The report's "VLM per fine-tune iteration" table and plot, from the runs' ``eval/vlm-v<N>.json`` files.

``covr eval RUN_DIR --actor vlm --adapter all`` writes one result per adapter version (v0 = base model,
:mod:`covr_ray.vlm.policy`). Here they become, per (preset, group) and adapter version, where a run's group
is its group in the policy tables (a sweep's variant, or the config fields that differ; ``--group-by``'s
value) and per-run rows are named by the run's path under the report's directory:

- the mean +- std over runs of each run's mean episode return (and driving distance), and the share of the
  VLM's answers that did not parse (all runs' unparsed answers over all their queries);
- per run, its mean +- std over episodes;
- ``vlm/<preset>.png``: return vs adapter version, one line per group, a +- std band over runs.

Files (added to the report's): ``vlm.md`` (also appended to ``results.md``), ``vlm.csv`` (one row per
preset x group x version), ``vlm_runs.csv`` (one row per run x version).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from covr_ray.errors import CovrError, ReportError
from covr_ray.report.groups import group_label
from covr_ray.report.plots import safe_name, save_png
from covr_ray.report.runs import find_run_dirs
from covr_ray.report.tables import csv_text, fmt_pm
from covr_ray.run_dir import RunDir
from covr_ray.stats import mean_std

VLM_COLUMNS = ["preset", "group", "env", "adapter_version", "n_runs", "return_mean", "return_std", "distance_m_mean",
               "distance_m_std", "queries", "parse_failures", "parse_failure_share"]
VLM_RUNS_COLUMNS = ["run_dir", "preset", "group", "seed", "env", "adapter_version", "episodes", "query_every",
                    "return_mean", "return_std", "distance_m_mean", "queries", "parse_failures", "parse_failure_share"]


@dataclass
class VLMResult:
    """One run's VLM evaluation with one adapter version (one ``eval/vlm-v<N>.json``)."""

    path: Path
    preset: str
    seed: int
    env: str
    group: str
    version: int
    episodes: int
    query_every: int
    return_mean: float
    return_std: float
    distance_m: Optional[float]
    queries: int
    parse_failures: int


@dataclass
class VLMReport:
    """Every VLM result found, the files that could not be read (with the reason) and the group rows."""

    results: list[VLMResult] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    root: Optional[Path] = None
    """The directory searched: per-run rows are labelled by their path under it (``covr-qfilter/s0``)."""

    def label(self, path: Path) -> str:
        """``path`` under :attr:`root` (its name when it is not under it)."""
        return str(path.relative_to(self.root)) if self.root is not None and path.is_relative_to(self.root) \
            else path.name

    def regroup(self, groups: dict[Path, str]) -> None:
        """Give each result the group of its run in the policy tables (``groups``: run directory -> group, e.g.
        a sweep's variant), so the VLM of each variant gets its own row and line; results of runs not in
        ``groups`` keep theirs. Recomputes :attr:`rows`."""
        for r in self.results:
            r.group = groups.get(r.path, r.group)
        self.rows = summarize_vlm(self.results)


def _share(failures: int, queries: int) -> Optional[float]:
    return failures / queries if queries else None


def _read(path: Path, run_dir: Path, cfg: Any, group: str, version: int) -> VLMResult:
    try:
        data = json.loads(path.read_text())
        ret, std = float(data["return_mean"]), float(data["return_std"])
        dist = float(data["distance_m_mean"]) if "distance_m_mean" in data else None
        queries, failures = int(data["queries"]), int(data["parse_failures"])
        episodes, every = int(data["episodes"]), int(data["query_every"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path} is not a VLM eval result (needs return_mean, return_std, queries, "
                          f"parse_failures, episodes, query_every): {exc}") from exc
    if not all(math.isfinite(x) for x in (ret, std, dist if dist is not None else 0.0)):
        raise ReportError(f"{path} holds a non-finite return or distance")
    return VLMResult(run_dir, cfg.preset, int(cfg.seed), cfg.env.name, group, version, episodes, every, ret, std,
                     dist, queries, failures)


def collect_vlm(runs_dir: str | Path, group_by: Optional[str] = None) -> VLMReport:
    """Every ``eval/vlm-v<N>.json`` of the runs under ``runs_dir`` and the group rows (:func:`summarize_vlm`).

    A run whose config cannot be read, or a file that is not a VLM result, is skipped with the reason.
    """
    report = VLMReport(root=Path(runs_dir))
    for run_dir in find_run_dirs(runs_dir):
        run = RunDir(run_dir)
        files = run.vlm_eval_results()
        if not files:
            continue
        try:
            cfg = run.read_config()
            group = group_label(cfg.to_dict(), group_by)
        except CovrError as exc:  # ReportError, CheckpointError, ConfigError, ...
            report.skipped.append((run_dir, f"{type(exc).__name__}: {exc}"))
            continue
        for version, path in files:
            try:
                report.results.append(_read(path, run_dir, cfg, group, version))
            except ReportError as exc:
                report.skipped.append((path, str(exc)))
    report.rows = summarize_vlm(report.results)
    return report


def summarize_vlm(results: list[VLMResult]) -> list[dict[str, Any]]:
    """One row per (preset, group, adapter version): mean +- std over runs, parse-failure share."""
    rows = []
    for preset, group, version in sorted({(r.preset, r.group, r.version) for r in results}):
        members = [r for r in results if (r.preset, r.group, r.version) == (preset, group, version)]
        ret_mean, ret_std = mean_std([r.return_mean for r in members])
        dists = [r.distance_m for r in members if r.distance_m is not None]
        queries = sum(r.queries for r in members)
        failures = sum(r.parse_failures for r in members)
        row: dict[str, Any] = {"preset": preset, "group": group, "env": members[0].env, "adapter_version": version,
                               "n_runs": len(members), "return_mean": ret_mean, "return_std": ret_std,
                               "distance_m_mean": None, "distance_m_std": None, "queries": queries,
                               "parse_failures": failures, "parse_failure_share": _share(failures, queries)}
        if dists:
            row["distance_m_mean"], row["distance_m_std"] = mean_std(dists)
        rows.append(row)
    return rows


def _cell(mean: Optional[float], std: Optional[float], share: Optional[float]) -> str:
    text = fmt_pm(mean, std)
    return text if share is None or text == "-" else f"{text} ({100.0 * share:.0f} % unparsed)"


def vlm_markdown(report: VLMReport, group_by: Optional[str]) -> str:
    """The VLM tables as a Markdown section (empty when there are no VLM results)."""
    if not report.results and not report.skipped:
        return ""
    versions = sorted({r.version for r in report.results})
    vcols = [f"v{v}" + (" (base)" if v == 0 else "") for v in versions]
    show_group = bool(group_by) or len({r.group for r in report.results}) > 1
    gcol = [group_by or "group"] if show_group else []
    lines = ["## VLM per fine-tune iteration", "",
             "The VLM alone as the policy (`covr eval --actor vlm`), per LoRA adapter version (v0 = base model): "
             "episode return, mean ± std over runs, and the share of its answers that did not parse.", "",
             "| preset | " + " | ".join(gcol + ["runs"] + vcols) + " |", "|" + "---|" * (2 + len(gcol) + len(vcols))]
    for preset, group in sorted({(r["preset"], r["group"]) for r in report.rows}):
        by_version = {r["adapter_version"]: r for r in report.rows if (r["preset"], r["group"]) == (preset, group)}
        runs = len({r.path for r in report.results if (r.preset, r.group) == (preset, group)})
        cells = [_cell(by_version[v]["return_mean"], by_version[v]["return_std"], by_version[v]["parse_failure_share"])
                 if v in by_version else "-" for v in versions]
        lines.append("| " + " | ".join([preset] + ([group] if show_group else []) + [str(runs)] + cells) + " |")
    if any(r["distance_m_mean"] is not None for r in report.rows):
        lines += ["", "Driving distance (m), mean ± std over runs:", "",
                  "| preset | " + " | ".join(gcol + vcols) + " |", "|" + "---|" * (1 + len(gcol) + len(vcols))]
        driving = {(r["preset"], r["group"]) for r in report.rows if r["distance_m_mean"] is not None}
        for preset, group in sorted(driving):
            by_version = {r["adapter_version"]: r for r in report.rows if (r["preset"], r["group"]) == (preset, group)}
            cells = [fmt_pm(by_version[v]["distance_m_mean"], by_version[v]["distance_m_std"]) if v in by_version
                     else "-" for v in versions]
            lines.append("| " + " | ".join([preset] + ([group] if show_group else []) + cells) + " |")
    lines += ["", "Per run (mean ± std over its episodes):", "",
              "| run | preset | seed | " + " | ".join(gcol + ["a query every"] + vcols) + " |",
              "|" + "---|" * (4 + len(gcol) + len(vcols))]
    for path in sorted({r.path for r in report.results}):
        mine = {r.version: r for r in report.results if r.path == path}
        first = next(iter(mine.values()))
        cells = [_cell(mine[v].return_mean, mine[v].return_std, _share(mine[v].parse_failures, mine[v].queries))
                 if v in mine else "-" for v in versions]
        every = " / ".join(sorted({str(r.query_every) for r in mine.values()}))
        lines.append("| " + " | ".join([report.label(path), first.preset, str(first.seed)]
                                       + ([first.group] if show_group else []) + [every] + cells) + " |")
    if report.skipped:
        lines += ["", "Skipped VLM results:", ""] + [f"- `{p}`: {reason}" for p, reason in report.skipped]
    return "\n".join(lines) + "\n"


def vlm_texts(files: dict[str, str], report: VLMReport, group_by: Optional[str]) -> dict[str, str]:
    """``files`` (the report's name -> text) plus ``vlm.md``, ``vlm.csv`` and ``vlm_runs.csv``, with the VLM
    section appended to ``results.md``; ``files`` unchanged when no run has VLM results."""
    section = vlm_markdown(report, group_by)
    if not section:
        return files
    out = dict(files)
    out["results.md"] = out.get("results.md", "# COVR results\n") + "\n" + section
    out["vlm.md"] = "# COVR: the VLM as the policy\n\n" + section
    out["vlm.csv"] = csv_text(report.rows, VLM_COLUMNS)
    out["vlm_runs.csv"] = csv_text([{
        "run_dir": str(r.path), "preset": r.preset, "group": r.group, "seed": r.seed, "env": r.env,
        "adapter_version": r.version, "episodes": r.episodes, "query_every": r.query_every,
        "return_mean": r.return_mean, "return_std": r.return_std, "distance_m_mean": r.distance_m,
        "queries": r.queries, "parse_failures": r.parse_failures,
        "parse_failure_share": _share(r.parse_failures, r.queries)} for r in report.results], VLM_RUNS_COLUMNS)
    return out


def plot_vlm(report: VLMReport, out_dir: Path, group_by: Optional[str]) -> list[Path]:
    """``vlm/<preset>.png``: episode return vs adapter version (0 = base), one line per group, +- std band."""
    if not report.rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for preset in sorted({r["preset"] for r in report.rows}):
        fig = Figure(figsize=(6.0, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        versions: set[int] = set()
        for group in sorted({r["group"] for r in report.rows if r["preset"] == preset}):
            rows = sorted((r for r in report.rows if (r["preset"], r["group"]) == (preset, group)),
                          key=lambda r: r["adapter_version"])
            xs = [r["adapter_version"] for r in rows]
            mean = [r["return_mean"] for r in rows]
            std = [r["return_std"] for r in rows]
            versions.update(xs)
            runs = max(r["n_runs"] for r in rows)
            label = (f"{group_by}={group} (n={runs})" if group_by else f"{group} (n={runs})" if group
                     else f"n={runs}")
            line, = ax.plot(xs, mean, marker="o", label=label)
            ax.fill_between(xs, np.subtract(mean, std), np.add(mean, std), alpha=0.2, color=line.get_color())
        ax.set_xticks(sorted(versions))
        ax.set_xticklabels([f"v{v}" + ("\n(base)" if v == 0 else "") for v in sorted(versions)])
        ax.set_title(f"{preset}: the VLM as the policy")
        ax.set_xlabel("LoRA adapter version (fine-tune iteration)")
        ax.set_ylabel("eval episode return")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        paths.append(save_png(fig, out_dir / "vlm" / f"{safe_name(preset)}.png"))
    return paths

