"""Statistics per group of runs: mean +- std, the mean and IQM of the final evaluations with 95 %
stratified-bootstrap intervals, the probability of improvement over the group's base (all rliable, through
:mod:`covr_ray.stats`), the paper's number for the group, the across-preset aggregate, and learning curves
aligned over runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from covr_ray.report.groups import GroupInfo, paper_match
from covr_ray.report.runs import RunRecord
from covr_ray.stats import improvement_probability_ci, iqm_ci, mean_ci, mean_std


def paper_pair(value: Any) -> tuple[Any, Any]:
    """A paper number as ``paper_numbers.yaml`` holds it (``[mean, std]``, a bare mean, or absent) ->
    ``(mean or None, std or None)``."""
    if value is None:
        return None, None
    if isinstance(value, (list, tuple)):
        return (value[0], value[1] if len(value) > 1 else None)
    return value, None


def summarize_groups(groups: list[GroupInfo], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (preset, group): counts, mean/std of final return and distance, mean and IQM of the
    final returns with 95 % intervals, P(group > its base) with its interval, the matching paper row."""
    rows = []
    by_key = {(g.preset, g.label): g for g in groups}
    for g in groups:
        members = g.members
        returns = [r.return_mean for r in members]
        dists = [r.distance_m for r in members if r.distance_m is not None]
        ret_mean, ret_std = mean_std(returns)
        _, mean_low, mean_high = mean_ci([returns], reps=reps, seed=seed)
        point, low, high = iqm_ci([returns], reps=reps, seed=seed)
        row: dict[str, Any] = {
            "preset": g.preset, "group": g.label, "config": g.config, "env": members[0].env,
            "n_runs": len(members), "seeds": " ".join(str(s) for s in sorted(r.seed for r in members)),
            "env_steps_min": min(r.env_steps for r in members), "env_steps_max": max(r.env_steps for r in members),
            "return_mean": ret_mean, "return_std": ret_std, "mean_ci_low": mean_low, "mean_ci_high": mean_high,
            "iqm_return": point, "iqm_ci_low": low, "iqm_ci_high": high,
            "distance_m_mean": None, "distance_m_std": None, "n_distance": len(dists),
            "base_group": g.base, "p_improve": None, "p_improve_ci_low": None, "p_improve_ci_high": None,
            "paper_method": None, "paper_return_mean": None, "paper_return_std": None,
            "paper_distance_m_mean": None, "paper_distance_m_std": None, "paper_table": None,
        }
        if dists:
            row["distance_m_mean"], row["distance_m_std"] = mean_std(dists)
        base = by_key.get((g.preset, g.base)) if g.base is not None else None
        if base is not None:
            row["p_improve"], row["p_improve_ci_low"], row["p_improve_ci_high"] = improvement_probability_ci(
                returns, [r.return_mean for r in base.members], reps=reps, seed=seed)
        paper = paper_match(g.preset, g.common)
        if paper is not None:
            row["paper_method"], row["paper_table"] = paper["method"], paper["table"]
            row["paper_return_mean"], row["paper_return_std"] = paper_pair(paper.get("return"))
            if paper.get("distance_m") is not None:
                row["paper_distance_m_mean"], row["paper_distance_m_std"] = paper_pair(paper["distance_m"])
        rows.append(row)
    return rows


def aggregate_groups(runs: list[RunRecord], reps: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per group label over all its presets: IQM of the final returns, bootstrap stratified by preset (runs
    resampled within each preset). Only labels found on more than one preset get a row."""
    rows = []
    for group in sorted({r.group for r in runs}):
        presets = sorted({r.preset for r in runs if r.group == group})
        if len(presets) < 2:
            continue
        strata = [[r.return_mean for r in runs if r.group == group and r.preset == p] for p in presets]
        point, low, high = iqm_ci(strata, reps=reps, seed=seed)
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
