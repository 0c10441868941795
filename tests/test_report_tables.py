"""``covr report`` over run directories built with the real writers (save_config, MetricsSink, eval JSON):
the tables, grouping by the config fields that differ, sweep labels, P(improvement), the paper's numbers."""

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
from covr_ray.stats import improvement_probability_ci, iqm_ci, mean_std
from covr_ray.sweep.state import write_sweep_file

CSV_ONLY = LoggingSection(wandb=False, tensorboard=False, csv=True)


def make_run(root: Path, preset: str, seed: int, curve: list[tuple[int, float]], base: str = "rad",
             distance: Optional[float] = None, eval_files: bool = True, sets: tuple[str, ...] = (),
             name: Optional[str] = None) -> Path:
    """A run directory: config.yaml, metrics.csv with eval/return_mean rows (plus a learner key), and one
    eval JSON per curve point (the last one is the final evaluation)."""
    cfg = load_config(preset, [f"seed={seed}", f"sac.base={base}", *sets])
    run_dir = root / (name or f"{preset}-{base}-{seed}")
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
    rows = {(r["preset"], r["group"]): r for r in _read_csv(out / "results.csv")}
    # the cartpole runs differ in sac.base: two groups, labelled by it; the driving runs in nothing: one
    assert set(rows) == {("dmc-cartpole-swingup", "sac.base=rad"), ("dmc-cartpole-swingup", "sac.base=sac"),
                         ("driving-hw", "")}
    assert summary["group_fields"] == {"dmc-cartpole-swingup": ["sac.base"], "driving-hw": []}
    rad = rows[("dmc-cartpole-swingup", "sac.base=rad")]
    finals = [800.0, 850.0, 900.0]
    assert int(rad["n_runs"]) == 3 and rad["seeds"] == "0 1 2" and rad["group_fields"] == "sac.base"
    assert float(rad["return_mean"]) == pytest.approx(np.mean(finals))
    assert float(rad["return_std"]) == pytest.approx(np.std(finals))
    point, low, high = iqm_ci([finals], reps=300, seed=0)
    assert float(rad["iqm_return"]) == pytest.approx(point)
    assert float(rad["iqm_ci_low"]) == pytest.approx(low) and float(rad["iqm_ci_high"]) == pytest.approx(high)
    assert float(rad["mean_ci_low"]) <= float(rad["return_mean"]) <= float(rad["mean_ci_high"])
    assert rad["distance_m_mean"] == ""
    drive = rows[("driving-hw", "")]
    assert int(drive["n_runs"]) == 3
    assert float(drive["return_mean"]) == pytest.approx(np.mean([200.0, 260.0, 230.0]))
    assert float(drive["distance_m_mean"]) == pytest.approx(np.mean([220.0, 280.0, 250.0]))
    assert float(drive["distance_m_std"]) == pytest.approx(np.std([220.0, 280.0, 250.0]))
    per_run = {(r["preset"], r["seed"], r["source"]) for r in _read_csv(out / "runs.csv")}
    assert ("driving-hw", "2", "metrics.csv") in per_run and ("driving-hw", "0", "eval json") in per_run
    assert [Path(p).name for p, _ in summary["skipped"]] == ["crashed"]
    md = (out / "results.md").read_text()
    assert "Groups by the config fields that differ between this preset's runs: `sac.base`." in md
    assert "| sac.base=rad | 3 | 10000 | 850 ± 41 |" in md
    assert "One group: the runs differ in their seeds only." in md
    assert "| all runs | 3 | 10000 | 230 ± 24 |" in md and "## Skipped runs" in md and "crashed" in md
    # the paper's cartpole numbers beside them: COVR (on RAD) 872 +- 2, COVR on SAC 740 (cross-baseline table)
    assert rad["paper_method"] == "COVR"
    assert (float(rad["paper_return_mean"]), float(rad["paper_return_std"])) == (872, 2)
    assert rows[("dmc-cartpole-swingup", "sac.base=sac")]["paper_method"] == "COVR on SAC"
    assert drive["paper_method"] == ""  # the embedded highway is not the paper's CARLA
    assert "### dmc-cartpole-swingup: DMControl 100K table; cross-baseline table" in md


def test_demo_runs_differing_in_prior_enabled_are_two_rows_with_p_improvement(tmp_path: Path) -> None:
    """The bug: two COVR runs and two prior.enabled=false runs of `demo` came out as one row ('144 +- 88')."""
    root = tmp_path / "demo"
    for seed, final in ((0, 200.0), (1, 240.0)):
        make_run(root, "demo", seed, [(500, 50.0), (1500, final)], name=f"covr-{seed}")
    for seed, final in ((0, 40.0), (1, 90.0)):
        # base runs made by hand with leftovers that change nothing without the prior
        make_run(root, "demo", seed, [(500, 30.0), (1500, final)], name=f"base-{seed}",
                 sets=("prior.enabled=false", f"eddf.mode={'random' if seed else 'eddf'}", "logging.wandb=true",
                       "ray.address=auto"))
    summary = build_report(root, tmp_path / "out", reps=200, plots=False)
    rows = {r["group"]: r for r in summary["rows"]}
    assert set(rows) == {"prior.enabled=true", "prior.enabled=false"}
    assert summary["group_fields"] == {"demo": ["prior.enabled"]}
    covr, base = rows["prior.enabled=true"], rows["prior.enabled=false"]
    assert covr["n_runs"] == base["n_runs"] == 2
    assert (covr["return_mean"], covr["return_std"]) == mean_std([200.0, 240.0])
    assert covr["base_group"] == "prior.enabled=false" and base["base_group"] is None
    assert (covr["p_improve"], covr["p_improve_ci_low"], covr["p_improve_ci_high"]) == pytest.approx(
        improvement_probability_ci([200.0, 240.0], [40.0, 90.0], reps=200, seed=0))
    assert covr["p_improve"] == 1.0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "`prior.enabled`" in md and "| prior.enabled=true | 2 | 1500 | 220 ± 20 |" in md
    assert "| prior.enabled=false | 1.00 [" in md


def test_base_of_each_covr_group_is_the_prior_off_group_agreeing_on_the_other_fields(tmp_path: Path) -> None:
    root = tmp_path / "cross"
    for base, covr_final, base_final in (("rad", 800.0, 700.0), ("sac", 300.0, 350.0)):
        for seed in (0, 1):
            make_run(root, "dmc-cartpole-swingup", seed, [(10000, covr_final + seed)], base=base,
                     name=f"c-{base}-{seed}")
            make_run(root, "dmc-cartpole-swingup", seed, [(10000, base_final + seed)], base=base,
                     name=f"b-{base}-{seed}", sets=("prior.enabled=false",))
    summary = build_report(root, tmp_path / "out", reps=100, plots=False)
    rows = {r["group"]: r for r in summary["rows"]}
    assert summary["group_fields"] == {"dmc-cartpole-swingup": ["prior.enabled", "sac.base"]}
    assert rows["prior.enabled=true, sac.base=rad"]["base_group"] == "prior.enabled=false, sac.base=rad"
    assert rows["prior.enabled=true, sac.base=sac"]["base_group"] == "prior.enabled=false, sac.base=sac"
    assert rows["prior.enabled=true, sac.base=rad"]["p_improve"] == 1.0
    assert rows["prior.enabled=true, sac.base=sac"]["p_improve"] == 0.0
    # the paper's cross-baseline numbers beside each (COVR on the RAD base runs Qwen2.5-VL-3B as the paper)
    assert rows["prior.enabled=true, sac.base=rad"]["paper_method"] == "COVR"
    assert rows["prior.enabled=true, sac.base=rad"]["paper_return_mean"] == 872
    assert rows["prior.enabled=true, sac.base=sac"]["paper_return_mean"] == 740
    assert rows["prior.enabled=false, sac.base=sac"]["paper_return_mean"] == 237


def test_sweep_json_labels_groups_by_variant_and_names_the_base(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    entries = []
    for variant, sets, finals in (("covr", (), (250.0, 230.0)), ("no-ralw", ("ralw.mode=none",), (200.0, 210.0)),
                                  ("base", ("prior.enabled=false",), (100.0, 120.0))):
        for seed, final in enumerate(finals):
            make_run(out / variant, "carla-hw", seed, [(100000, final)], distance=final + 10, sets=sets,
                     name=f"s{seed}")
            entries.append({"variant": variant, "seed": seed, "run_dir": f"{variant}/s{seed}", "state": "done"})
    write_sweep_file(out, {"spec": {"preset": "carla-hw", "base_variant": "base"}, "runs": entries})
    make_run(tmp_path / "sweep" / "extra", "carla-hw", 7, [(100000, 5.0)], sets=("sac.lam=0.5",), name="hand")
    summary = build_report(out, tmp_path / "report", reps=100, plots=False)
    rows = {r["group"]: r for r in summary["rows"]}
    hand = "prior.enabled=true, ralw.mode=ralw, sac.lam=0.5"  # the hand-made run: its values of the fields
    assert set(rows) == {"covr", "no-ralw", "base", hand}
    assert rows["covr"]["config"] == "prior.enabled=true, ralw.mode=ralw, sac.lam=2.0"
    assert rows["covr"]["base_group"] == rows["no-ralw"]["base_group"] == "base"
    assert rows["base"]["base_group"] is None and rows["covr"]["p_improve"] == 1.0
    assert rows[hand]["base_group"] == "base"  # by hand: the prior-off group
    assert rows["covr"]["paper_method"] == "COVR" and rows["covr"]["paper_return_std"] == 81
    assert rows["no-ralw"]["paper_method"] == "COVR, no RALW (ablation)" and rows["no-ralw"]["paper_return_mean"] == 204
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| covr | prior.enabled=true, ralw.mode=ralw, sac.lam=2.0 | 2 |" in md
    assert "COVR: 248 ± 81 (259 ± 85 m)" in md and "| SAC | 69 ± 46 | 91 ± 56 | - |" in md
    runs_csv = {(r["variant"], r["seed"]) for r in _read_csv(tmp_path / "report" / "runs.csv")}
    assert ("covr", "0") in runs_csv and ("", "7") in runs_csv
    # a report of one variant's directory still finds the sweep file above it
    one = build_report(out / "covr", tmp_path / "one", reps=20, plots=False)
    assert [r["group"] for r in one["rows"]] == ["covr"]


def test_the_vlm_of_each_sweep_variant_gets_its_own_row_labelled_by_its_run_path(tmp_path: Path) -> None:
    """Two COVR variants of one sweep, each with VLM results: one VLM row per variant (not one row of both),
    and per-run rows named by their path under the report's directory (``covr/s0``, not ``s0`` twice)."""
    from covr_ray.evaluate import write_result
    from covr_ray.run_dir import RunDir

    out = tmp_path / "sweep"
    entries = []
    for variant, sets, vlm_return in (("covr", (), 100.0), ("gated", ("sac.prior_gate=q_filter",), 300.0),
                                      ("base", ("prior.enabled=false",), None)):
        for seed in (0, 1):
            run = make_run(out / variant, "driving-hw", seed, [(2000, 50.0 + seed)], distance=60.0, sets=sets,
                           name=f"s{seed}")
            entries.append({"variant": variant, "seed": seed, "run_dir": f"{variant}/s{seed}", "state": "done"})
            for version in ((0, 1) if vlm_return is not None else ()):
                write_result(RunDir(run).vlm_eval_result(version), {
                    "return_mean": vlm_return * version + seed, "return_std": 1.0, "queries": 50,
                    "parse_failures": 0, "episodes": 2, "query_every": 10})
    write_sweep_file(out, {"spec": {"preset": "driving-hw", "base_variant": "base"}, "runs": entries})
    summary = build_report(out, tmp_path / "report", reps=20, plots=False)
    rows = {(r["group"], r["adapter_version"]): r for r in summary["vlm"]}
    assert set(rows) == {("covr", 0), ("covr", 1), ("gated", 0), ("gated", 1)}
    assert rows[("gated", 1)]["return_mean"] == pytest.approx(300.5) and rows[("gated", 1)]["n_runs"] == 2
    assert rows[("covr", 1)]["return_mean"] == pytest.approx(100.5)
    md = (tmp_path / "report" / "vlm.md").read_text()
    assert "| preset | group | runs | v0 (base) | v1 |" in md
    assert "| covr/s0 | driving-hw | 0 | covr | 10 |" in md and "| gated/s1 | driving-hw | 1 | gated | 10 |" in md


def test_group_by_splits_by_one_key_and_aggregates_across_presets(runs: Path, tmp_path: Path) -> None:
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
    expected = iqm_ci([[800.0, 850.0, 900.0], [200.0, 260.0, 230.0]], reps=200, seed=0)
    assert float(aggregate[0]["iqm_return"]) == pytest.approx(expected[0])
    assert float(aggregate[0]["iqm_ci_low"]) == pytest.approx(expected[1])
    assert "Groups by `--group-by sac.base`" in (out / "results.md").read_text()


def test_learning_curves_csv_and_png(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves"
    summary = build_report(runs, out, reps=50)
    curve = [r for r in _read_csv(out / "curves.csv")
             if r["preset"] == "dmc-cartpole-swingup" and r["group"] == "sac.base=rad"]
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


def test_a_resumed_runs_second_rows_for_a_step_replace_the_stopped_runs(tmp_path: Path) -> None:
    """A run stopped after an evaluation at 5000 and resumed from an earlier checkpoint logs 5000 again: the
    curve holds the resumed run's value once, and the final result is the last step's."""
    from covr_ray.report.runs import load_run

    run = make_run(tmp_path, "driving-hw", 0, [(0, 10.0), (5000, 999.0), (5000, 20.0), (10000, 30.0)],
                   distance=100.0, eval_files=False)
    record = load_run(run)
    assert record.curve == [(0, 10.0), (5000, 20.0), (10000, 30.0)]
    assert (record.env_steps, record.return_mean, record.source) == (10000, 30.0, "metrics.csv")
    assert record.distance_m == pytest.approx(110.0)


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
    (runs / "sweep.json").write_text("{not json")
    summary = build_report(runs, tmp_path / "y", reps=20, plots=False)
    reasons = {Path(p).name: r for p, r in summary["skipped"]}
    assert any("return_mean" in r for r in reasons.values())
    assert "cannot read" in reasons["sweep.json"]  # its runs are grouped by their fields alone


def test_cli_report(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["report", str(runs), "--out", str(out), "--group-by", "sac.base", "--reps", "50", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "# COVR results" in text and "8 runs, 1 skipped" in text
    assert not (out / "curves").exists()
    assert main(["report", str(runs), "--out", str(out), "--group-by", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
