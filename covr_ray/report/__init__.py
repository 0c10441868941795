"""``covr report RUNS_DIR``: paper-style tables and learning curves over the runs under a directory.

    covr report runs/ --group-by sac.base          # -> runs/report/{results.md, results.csv, ...}

A run directory is any directory holding ``config.yaml`` (written by ``covr train``; the layout is
:class:`covr_ray.run_dir.RunDir`'s); its results are

- the *final evaluation*: the ``eval/eval-<env_steps>.json`` with the largest ``env_steps`` (its
  ``return_mean`` and, for driving, ``distance_m_mean``); a run without eval files falls back to the last
  ``eval/return_mean`` / ``eval/distance_m_mean`` rows of its ``metrics.csv`` (the ``source`` column says
  which was used); a run with neither is listed as skipped, with the reason;
- the *learning curve*: the ``eval/return_mean`` rows of ``metrics.csv`` against env steps (or, without
  them, the eval JSON files), one value per step: a run resumed from a checkpoint logs the steps after it
  again, and its rows replace the stopped run's.

Runs are grouped per preset by the config fields that differ between its runs (seed, run directory and
other run-local fields excluded; the table names the fields, e.g. ``prior.enabled=false``); a sweep's
``sweep.json`` gives its variant names as labels; ``--group-by KEY`` groups by that one key instead. For
each group the report gives mean +- std over runs (seeds) of the final return and driving distance, as the
paper's tables do, the IQM and mean with 95 % stratified-bootstrap intervals and the probability of
improvement over the group's base (rliable, :mod:`covr_ray.stats`), and the paper's own numbers where the
preset is one of the paper's scenarios (``paper_numbers.yaml``). Across presets, each group also gets one
aggregate IQM, stratified by preset. Runs with ``covr eval --actor vlm`` results also get the "VLM per
fine-tune iteration" table and plot (:mod:`~covr_ray.report.vlm`).

Outputs (each written atomically) in ``--out`` (default ``RUNS_DIR/report``): ``results.md`` (the tables),
``results.csv`` (one row per preset x group), ``aggregate.csv``, ``runs.csv`` (one row per run),
``curves.csv`` (mean, std and run count per env step) and ``curves/<preset>.png`` (mean +- std band over
runs, one line per group).

One module per concern:

- :mod:`~covr_ray.report.runs`: finding run directories and reading each run's results (:class:`RunRecord`);
- :mod:`~covr_ray.report.groups`: grouping by the fields that differ (or ``--group-by``), each group's base,
  the paper's numbers;
- :mod:`~covr_ray.report.summary`: statistics per group (mean +- std, IQM, aligned learning curves);
- :mod:`~covr_ray.report.tables`: number formatting, the Markdown tables and the CSV files;
- :mod:`~covr_ray.report.plots`: the learning-curve PNGs;
- :mod:`~covr_ray.report.vlm`: the VLM-as-a-policy table and plot per adapter version;
- :mod:`~covr_ray.report.build`: :func:`build_report`, which runs them all and writes the outputs.
"""

from covr_ray.report.build import build_report
from covr_ray.report.groups import check_group_key, config_value
from covr_ray.report.runs import RunRecord, collect_runs, find_run_dirs, load_run
from covr_ray.report.summary import aggregate_groups, align_curves, curve_rows, summarize_groups

__all__ = ["RunRecord", "aggregate_groups", "align_curves", "build_report", "check_group_key", "collect_runs",
           "config_value", "curve_rows", "find_run_dirs", "load_run", "summarize_groups"]
