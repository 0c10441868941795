"""``covr report RUNS_DIR``: paper-style tables and learning curves over the runs under a directory.

    covr report runs/ --group-by sac.base          # -> runs/report/{results.md, results.csv, ...}

A run directory is any directory holding ``config.yaml`` (written by ``covr train``; the layout is
:class:`covr_ray.run_dir.RunDir`'s); its results are

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

One module per concern:

- :mod:`~covr_ray.report.runs`: finding run directories and reading each run's results (:class:`RunRecord`);
- :mod:`~covr_ray.report.groups`: the ``--group-by`` key and a run's group label;
- :mod:`~covr_ray.report.summary`: statistics per group (mean +- std, IQM, aligned learning curves);
- :mod:`~covr_ray.report.tables`: number formatting, the Markdown tables and the CSV files;
- :mod:`~covr_ray.report.plots`: the learning-curve PNGs;
- :mod:`~covr_ray.report.build`: :func:`build_report`, which runs them all and writes the outputs.
"""

from covr_ray.report.build import build_report
from covr_ray.report.groups import check_group_key, config_value
from covr_ray.report.runs import RunRecord, collect_runs, find_run_dirs, load_run
from covr_ray.report.summary import aggregate_groups, align_curves, curve_rows, summarize_groups

__all__ = ["RunRecord", "aggregate_groups", "align_curves", "build_report", "check_group_key", "collect_runs",
           "config_value", "curve_rows", "find_run_dirs", "load_run", "summarize_groups"]
