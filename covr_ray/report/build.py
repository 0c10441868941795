"""``build_report``: collect the runs, compute the statistics, write every output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from covr_ray.errors import ReportError
from covr_ray.io import atomic_write_text
from covr_ray.log import get_logger
from covr_ray.report.groups import assign_groups
from covr_ray.report.plots import plot_curves
from covr_ray.report.runs import collect_runs
from covr_ray.report.summary import aggregate_groups, curve_rows, summarize_groups
from covr_ray.report.tables import report_texts
from covr_ray.report.vlm import collect_vlm, plot_vlm, vlm_texts

log = get_logger(__name__)


def build_report(runs_dir: str | Path, out_dir: Optional[str | Path] = None, group_by: Optional[str] = None,
                 reps: int = 2000, seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Scan ``runs_dir``, write every output file, and return ``{"rows", "aggregate", "runs", "skipped",
    "files", "out_dir", "vlm", "group_fields"}`` (rows as dicts, file paths as strings; ``vlm``: the rows of
    the "VLM per fine-tune iteration" table, :mod:`covr_ray.report.vlm`; ``group_fields``: per preset, the
    config fields that define its groups, :mod:`covr_ray.report.groups`).

    Raises:
        ReportError: no run with results (neither policy nor VLM evaluations), an unknown ``group_by``
            key, bad ``reps``.
    """
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir / "report"
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise ReportError(f"--reps {reps!r} must be an integer >= 1")
    runs, skipped = collect_runs(runs_dir, group_by)
    vlm = collect_vlm(runs_dir, group_by)  # `covr eval --actor vlm` results (report/vlm.py)
    for path, reason in skipped + vlm.skipped:
        log.warning("skipped %s: %s", path, reason)
    if not runs and not vlm.results:
        found = len(skipped)
        raise ReportError(f"no run with results under {runs_dir} ({found} run director{'y' if found == 1 else 'ies'} "
                          "skipped); a run directory holds config.yaml plus eval/eval-<steps>.json or eval rows "
                          "in metrics.csv")
    groups, group_fields = assign_groups(runs, group_by)  # per preset: groups by the config fields that differ
    vlm.regroup({r.path: r.group for r in runs})  # the VLM of each group (a sweep's variant) on its own row
    rows = summarize_groups(groups, reps, seed)
    aggregate = aggregate_groups(runs, reps, seed)
    files = report_texts(rows, aggregate, curve_rows(runs), runs, skipped, group_by, reps, group_fields, seed)
    files = vlm_texts(files, vlm, group_by)
    written = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    if plots:
        written += plot_curves(runs, out, group_by, group_fields)
        written += plot_vlm(vlm, out, group_by)
    return {"rows": rows, "aggregate": aggregate, "runs": [str(r.path) for r in runs],
            "skipped": [(str(p), reason) for p, reason in skipped], "files": [str(p) for p in written],
            "out_dir": str(out), "vlm": vlm.rows, "group_fields": group_fields}
