"""``build_report``: collect the runs, compute the statistics, write every output file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from covr_ray.errors import ReportError
from covr_ray.io import atomic_write_text
from covr_ray.log import get_logger
from covr_ray.report.plots import plot_curves
from covr_ray.report.runs import collect_runs
from covr_ray.report.summary import aggregate_groups, curve_rows, summarize_groups
from covr_ray.report.tables import report_texts

log = get_logger(__name__)


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
    files = report_texts(rows, aggregate, curve_rows(runs), runs, skipped, group_by, reps)
    written = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    if plots:
        written += plot_curves(runs, out, group_by)
    return {"rows": rows, "aggregate": aggregate, "runs": [str(r.path) for r in runs],
            "skipped": [(str(p), reason) for p, reason in skipped], "files": [str(p) for p in written],
            "out_dir": str(out)}
