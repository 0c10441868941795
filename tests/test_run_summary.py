"""`covr summary RUN_DIR`: a run's evaluations against the random level, the VLM's held-out fit per round
(read back from the metrics.csv the loop's sink writes) and the VLM as a policy per adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from covr_ray.cli import main
from covr_ray.config import LoggingSection
from covr_ray.evaluate import evaluate_baseline, evaluate_run, write_eval_result
from covr_ray.metrics import MetricsSink
from covr_ray.report.run_summary import format_run_summary, run_summary, vlm_fit_rounds
from covr_ray.vlm.policy import write_vlm_eval_result
from support.policies import make_run_dir

ROUNDS = [  # step, version, rows, before, after, const, token acc, parsed
    (150, 1, 12, 1.7, 0.9, 0.5, 0.40, 1.0),
    (300, 2, 20, 0.8, 0.2, 0.4, 0.75, 1.0),
]


def _fill(run_dir: Path) -> None:
    with MetricsSink(run_dir, LoggingSection(wandb=False, tensorboard=False, csv=True)) as sink:
        for step, version, rows, before, after, const, acc, parsed in ROUNDS:
            sink.log({"lora/adapter_version": version, "lora/heldout_rows": rows,
                      "lora/heldout_action_err_before": before, "lora/heldout_action_err_after": after,
                      "lora/heldout_const_err": const, "lora/heldout_token_acc_after": acc,
                      "lora/heldout_parse_frac_after": parsed, "loop/env_steps": step}, step=step)
        sink.log({"loop/env_steps": 400}, step=400)  # a step without a round
    for steps, ret in ((200, -5.0), (400, 30.0)):
        write_eval_result(run_dir, {"env_steps": steps, "return_mean": ret, "return_std": 1.0, "episodes": 2})
    for version, ret in ((0, 1.0), (2, 4.0)):
        write_vlm_eval_result(run_dir, {"adapter_version": version, "return_mean": ret, "return_std": 0.5,
                                        "episodes": 2, "queries": 10, "parse_failures": version, "query_every": 10})


def test_summary_reads_every_part_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, cfg, _ = make_run_dir(tmp_path)
    _fill(run_dir)
    random, _ = evaluate_baseline(run_dir, "random", episodes=2)
    evaluate_baseline(run_dir, "constant", episodes=2, action="keep lane, keep speed")
    s = run_summary(run_dir)
    assert [p["env_steps"] for p in s["policy_curve"]] == [200, 400]
    assert s["random"]["return_mean"] == pytest.approx(random["return_mean"])
    assert s["final_above_random"] == (30.0 > random["return_mean"])
    assert s["constant"]["action"] == [0.0, 0.0] and s["constant"]["action_text"] == "keep lane, keep speed"
    assert [(r["round"], r["env_steps"], r["adapter_version"], r["heldout_rows"]) for r in s["vlm_fit"]] == [
        (1, 150, 1, 12), (2, 300, 2, 20)]
    assert s["vlm_fit"][1]["after_over_const"] == pytest.approx(0.2 / 0.4)
    assert s["vlm_fit"][0]["token_acc_after"] == pytest.approx(0.40)
    assert [(v["adapter_version"], v["parse_failures"]) for v in s["vlm_policy"]] == [(0, 0), (2, 2)]
    text = format_run_summary(s)
    assert s["vlm_fit"][0]["const_answer_err"] is None and s["vlm_fit"][0]["after_over_const_answer"] is None
    assert "0.50" in text and "v2" in text and "random actions" in text and "above the random level" in text
    assert "'keep lane, keep speed': a VLM answering only this" in text

    assert main(["summary", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vlm_fit"] == json.loads(json.dumps(s["vlm_fit"]))


def test_rounds_logged_at_one_step_stay_apart_and_take_their_own_values() -> None:
    """A resume collects the rounds done since its checkpoint at the checkpoint's step: two rounds at step 200,
    after the iteration's own ``lora/adapter_version`` row there; a round at 400 without a const figure."""
    def fit(version: float, after: float, const: Optional[float] = None) -> dict[str, list[float]]:
        return {"lora/adapter_version": [version], "lora/heldout_action_err_after": [after],
                **({"lora/heldout_const_err": [const]} if const is not None else {})}

    rows: dict[str, list[tuple[int, float]]] = {}
    for step, metrics in ((200, {"lora/adapter_version": [1.0]}), (200, fit(2, 0.3, 0.5)), (200, fit(3, 0.2, 0.4)),
                          (400, fit(4, 0.1))):
        for key, values in metrics.items():
            rows.setdefault(key, []).extend((step, v) for v in values)
    rounds = vlm_fit_rounds(rows)
    assert [(r["round"], r["env_steps"], r["adapter_version"], r["err_after"]) for r in rounds] == [
        (1, 200, 2, 0.3), (2, 200, 3, 0.2), (3, 400, 4, 0.1)]
    assert rounds[0]["after_over_const"] == pytest.approx(0.6) and rounds[1]["after_over_const"] == pytest.approx(0.5)
    assert rounds[2]["const_err"] is None and rounds[2]["after_over_const"] is None
    # a run that logs each round's own version: at a resume the service already serves the newest (v3) while
    # the rounds done since the checkpoint are collected, so lora/adapter_version says 3 for both
    rows["lora/adapter_version"] = [(200, 1.0), (200, 3.0), (200, 3.0), (400, 4.0)]
    rows["round/adapter_version"] = [(200, 2.0), (200, 3.0), (400, 4.0)]
    assert [r["adapter_version"] for r in vlm_fit_rounds(rows)] == [2, 3, 4]


def test_summary_of_a_bare_run_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _, _ = make_run_dir(tmp_path)
    evaluate_run(run_dir, episodes=1)
    assert main(["summary", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "not measured (covr eval RUN_DIR --actor random)" in text
    assert "no round measured a held-out fit" in text and "not evaluated" in text
    assert main(["summary", str(tmp_path / "nope")]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
