"""Statistics per group of runs: mean +- std and IQM (95 % stratified-bootstrap interval) of the final
evaluations, the across-preset aggregate, and learning curves aligned over runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from covr_ray.report.runs import RunRecord
from covr_ray.stats import iqm, mean_std, stratified_bootstrap_ci


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
