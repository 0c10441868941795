"""``covr report`` over run directories built with the real writers (save_config, MetricsSink, eval JSON)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from covr_ray.cli import main
from covr_ray.config import LoggingSection, load_config, save_config
from covr_ray.errors import ReportError
from covr_ray.evaluate import write_eval_result
from covr_ray.metrics import MetricsSink
from covr_ray.report import align_curves, build_report, find_run_dirs
from covr_ray.stats import iqm, stratified_bootstrap_ci

CSV_ONLY = LoggingSection(wandb=False, tensorboard=False, csv=True)


def make_run(root: Path, preset: str, seed: int, curve: list[tuple[int, float]], base: str = "rad",
             distance: Optional[float] = None, eval_files: bool = True) -> Path:
    """A run directory: config.yaml, metrics.csv with eval/return_mean rows (plus a learner key), and one
    eval JSON per curve point (the last one is the final evaluation)."""
    cfg = load_config(preset, [f"seed={seed}", f"sac.base={base}"])
    run_dir = root / f"{preset}-{base}-{seed}"
    save_config(cfg, run_dir / "config.yaml")
    with MetricsSink(run_dir, CSV_ONLY, ray_metrics=False) as sink:
        for steps, value in curve:
            sink.log({"learner/critic_loss": 1.0 / (1 + steps)}, step=steps)
            metrics = {"eval/return_mean": value, "eval/return_std": 1.0}
            if distance is not None:
                metrics["eval/distance_m_mean"] = distance + steps / 1000
            sink.log(metrics, step=steps)
    if eval_files:
        for steps, value in curve:
            result = {"env": cfg.env.name, "episodes": 10, "return_mean": value, "return_std": 1.0,
                      "env_steps": steps}
            if distance is not None:
                result.update({"distance_m_mean": distance + steps / 1000, "distance_m_std": 2.0})
            write_eval_result(run_dir, result)
    return run_dir


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    finals = {0: 800.0, 1: 850.0, 2: 900.0}
    for seed, final in finals.items():
        make_run(root / "dmc", "dmc-cartpole-swingup", seed, [(0, 100.0 + seed), (5000, 400.0), (10000, final)])
    make_run(root / "dmc", "dmc-cartpole-swingup", 0, [(0, 50.0), (10000, 300.0)], base="sac")
    make_run(root / "dmc", "dmc-cartpole-swingup", 1, [(0, 70.0), (10000, 500.0)], base="sac")
    make_run(root / "driving", "driving-hw", 0, [(0, 10.0), (10000, 200.0)], distance=210.0)
    make_run(root / "driving", "driving-hw", 1, [(0, 20.0), (10000, 260.0)], distance=270.0)
    # A run from metrics.csv only (no eval JSON), and a crashed run with no results at all.
    make_run(root / "driving", "driving-hw", 2, [(0, 15.0), (10000, 230.0)], distance=240.0, eval_files=False)
    crashed = root / "crashed"
    save_config(load_config("driving-hw"), crashed / "config.yaml")
    return root


def test_tables_have_the_mean_std_and_iqm_of_final_evals(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = build_report(runs, out, reps=300, seed=0)
    rows = {r["preset"]: r for r in _read_csv(out / "results.csv")}
    assert set(rows) == {"dmc-cartpole-swingup", "driving-hw"}
    dmc = rows["dmc-cartpole-swingup"]  # no --group-by: rad and sac runs pool into one preset row
    dmc_finals = [800.0, 850.0, 900.0, 300.0, 500.0]
    assert int(dmc["n_runs"]) == 5 and dmc["seeds"] == "0 0 1 1 2"
    assert float(dmc["return_mean"]) == pytest.approx(np.mean(dmc_finals))
    assert float(dmc["return_std"]) == pytest.approx(np.std(dmc_finals))
    assert float(dmc["iqm_return"]) == pytest.approx(iqm(dmc_finals))
    assert dmc["distance_m_mean"] == ""
    _, low, high = stratified_bootstrap_ci([dmc_finals], reps=300, seed=0)
    assert float(dmc["iqm_ci_low"]) == pytest.approx(low) and float(dmc["iqm_ci_high"]) == pytest.approx(high)
    drive = rows["driving-hw"]
    assert int(drive["n_runs"]) == 3
    assert float(drive["return_mean"]) == pytest.approx(np.mean([200.0, 260.0, 230.0]))
    assert float(drive["distance_m_mean"]) == pytest.approx(np.mean([220.0, 280.0, 250.0]))
    assert float(drive["distance_m_std"]) == pytest.approx(np.std([220.0, 280.0, 250.0]))
    per_run = {(r["preset"], r["seed"], r["source"]) for r in _read_csv(out / "runs.csv")}
    assert ("driving-hw", "2", "metrics.csv") in per_run and ("driving-hw", "0", "eval json") in per_run
    assert [Path(p).name for p, _ in summary["skipped"]] == ["crashed"]
    md = (out / "results.md").read_text()
    assert "| dmc-cartpole-swingup | 5 | 10000 | 670 ± 232 |" in md
    assert "| 250 ± 24 |" in md and "## Skipped runs" in md and "crashed" in md


def test_group_by_splits_ablations_and_aggregates_across_presets(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    build_report(runs, out, group_by="sac.base", reps=200, seed=0)
    rows = {(r["preset"], r["group"]): r for r in _read_csv(out / "results.csv")}
    assert set(rows) == {("dmc-cartpole-swingup", "rad"), ("dmc-cartpole-swingup", "sac"), ("driving-hw", "rad")}
    rad = rows[("dmc-cartpole-swingup", "rad")]
    assert float(rad["return_mean"]) == pytest.approx(850.0)
    assert float(rad["return_std"]) == pytest.approx(np.std([800.0, 850.0, 900.0]))
    assert float(rows[("dmc-cartpole-swingup", "sac")]["return_mean"]) == pytest.approx(400.0)
    aggregate = _read_csv(out / "aggregate.csv")
    assert [a["group"] for a in aggregate] == ["rad"]  # only rad spans two presets
    expected = stratified_bootstrap_ci([[800.0, 850.0, 900.0], [200.0, 260.0, 230.0]], reps=200, seed=0)
    assert float(aggregate[0]["iqm_return"]) == pytest.approx(expected[0])
    assert float(aggregate[0]["iqm_ci_low"]) == pytest.approx(expected[1])
    assert "| sac.base |" in (out / "results.md").read_text().splitlines()[4]


def test_learning_curves_csv_and_png(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves"
    summary = build_report(runs, out, group_by="sac.base", reps=50)
    curve = [r for r in _read_csv(out / "curves.csv")
             if r["preset"] == "dmc-cartpole-swingup" and r["group"] == "rad"]
    assert [int(r["env_steps"]) for r in curve] == [0, 5000, 10000]
    assert float(curve[0]["return_mean"]) == pytest.approx(101.0)  # seeds start at 100, 101, 102
    assert float(curve[0]["return_std"]) == pytest.approx(np.std([100.0, 101.0, 102.0]))
    assert float(curve[2]["return_mean"]) == pytest.approx(850.0) and curve[2]["n_runs"] == "3"
    pngs = sorted(Path(p).name for p in summary["files"] if p.endswith(".png"))
    assert pngs == ["dmc-cartpole-swingup.png", "driving-hw.png"]
    from PIL import Image

    with Image.open(out / "curves" / "dmc-cartpole-swingup.png") as img:
        assert img.format == "PNG" and img.size == (600, 400)
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # lines and bands were drawn


def test_align_curves_interpolates_inside_each_run_only() -> None:
    steps, mean, std, count = align_curves([[(0, 0.0), (10, 10.0)], [(0, 2.0), (5, 4.0)]])
    assert steps.tolist() == [0, 5, 10]
    assert mean.tolist() == pytest.approx([1.0, 4.5, 10.0])  # run 1 interpolated to 5 at step 5
    assert count.tolist() == [2, 2, 1] and std.tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_find_run_dirs_does_not_descend_into_runs(runs: Path) -> None:
    found = find_run_dirs(runs)
    assert len(found) == 9 and all((p / "config.yaml").is_file() for p in found)
    assert find_run_dirs(found[0]) == [found[0]]


def test_errors_name_what_is_wrong(runs: Path, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no key 'nope'.*available: .*lam"):
        build_report(runs, tmp_path / "x", group_by="sac.nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run with results"):
        build_report(tmp_path / "empty")
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "missing")
    bad = runs / "dmc" / "dmc-cartpole-swingup-rad-0" / "eval" / "eval-99999.json"
    bad.write_text(json.dumps({"episodes": 1}))
    summary = build_report(runs, tmp_path / "y", reps=20, plots=False)
    reasons = dict(summary["skipped"])
    assert any("return_mean" in r for r in reasons.values())


def test_cli_report(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["report", str(runs), "--out", str(out), "--group-by", "sac.base", "--reps", "50", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "# COVR results" in text and "8 runs, 1 skipped" in text
    assert not (out / "curves").exists()
    assert main(["report", str(runs), "--out", str(out), "--group-by", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
