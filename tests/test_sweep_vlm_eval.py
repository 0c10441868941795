"""``covr sweep``'s VLM evaluation step (spec ``vlm_eval``): the spec's typed errors, the step's status from
a run directory alone, and a real sweep over fake-finished runs that runs `covr eval --actor vlm --adapter
all` as subprocesses.

The runs are made here as a finished `covr train` leaves them (config, a checkpoint at the total, its final
evaluation), so no training runs; the sweep's only work is the VLM step: the tiny Qwen2.5-VL on its
transformers backend, one random LoRA adapter (v1), one episode of 5 agent steps of a 32-pixel driving env
per version. One run has a broken adapter, so its step fails (fast: before the model loads) and is retried.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from covr_ray.cli import main
from covr_ray.evaluate import write_eval_result
from covr_ray.lora.random_adapter import build_random_adapter
from covr_ray.run_dir import RunDir, write_loop_state
from covr_ray.sweep.backends import LocalBackend
from covr_ray.sweep.runner import Sweep, print_plan
from covr_ray.sweep.spec import SweepSpecError, VLMEvalSpec, load_spec, validate_spec
from covr_ray.sweep.state import read_sweep_file, run_status
from covr_ray.sweep.vlm_stage import vlm_eval_args, vlm_eval_status

TOTAL = 40
EVERY = 2


def _spec_data(model: str = ".cache/tiny-qwen2_5_vl", **vlm: Any) -> dict[str, Any]:
    return {"preset": "smoke", "seeds": [0, 1], "total_env_steps": TOTAL, "base_variant": "base",
            "common": [f"prior.model={model}", "prior.backend=transformers", f"prior.prior_every={EVERY}",
                       "lora.rank=8", "env.image_size=32", "env.max_episode_steps=5", "logging.tensorboard=false"],
            "variants": {"covr": [], "base": ["prior.enabled=false"]},
            "vlm_eval": vlm or {"episodes": 1}}


@pytest.mark.parametrize("vlm_eval, field, words", [
    ({"episodes": 0}, "vlm_eval.episodes", "integer in 1.."),
    ({"episodes": True}, "vlm_eval.episodes", "integer in 1.."),
    ({}, "vlm_eval.episodes", "episodes per adapter version"),
    ({"episodes": 5, "every": True}, "vlm_eval.every", "one of the vlm_eval keys episodes, every_frame"),
    ({"episodes": 5, "every_frame": "yes"}, "vlm_eval.every_frame", "true or false"),
    (5, "vlm_eval", "a mapping with episodes"),
])
def test_vlm_eval_spec_errors_name_the_field(vlm_eval: Any, field: str, words: str) -> None:
    data = _spec_data()
    data["vlm_eval"] = vlm_eval
    with pytest.raises(SweepSpecError, match="sweep spec field") as info:
        validate_spec(data)
    assert info.value.field == field and words in str(info.value)


def test_vlm_eval_spec_is_optional_and_round_trips() -> None:
    data = _spec_data(episodes=5, every_frame=True)
    spec = validate_spec(data)
    assert spec.vlm_eval == VLMEvalSpec(episodes=5, every_frame=True)
    assert spec.to_dict()["vlm_eval"] == {"episodes": 5, "every_frame": True}
    assert validate_spec(dict(data, vlm_eval=None)).vlm_eval is None
    assert vlm_eval_args("/r", spec.vlm_eval) == ["eval", "/r", "--actor", "vlm", "--adapter", "all", "--episodes",
                                                  "5", "--every-frame", "--json"]


def _finished_run(plan: Any) -> RunDir:
    """A run directory as a finished `covr train` leaves it: config, a checkpoint at the total, its eval."""
    run = RunDir.create(plan.run_dir, plan.config())
    ckpt = run.checkpoint(TOTAL)
    ckpt.mkdir(parents=True)
    write_loop_state(ckpt, {"env_steps": TOTAL})
    run.commit_checkpoint(ckpt)
    write_eval_result(run.root, {"env_steps": TOTAL, "return_mean": 1.0})
    assert run_status(run.root).status == "done"
    return run


def _result(run: RunDir, version: int, episodes: int, every: int) -> None:
    run.eval.mkdir(parents=True, exist_ok=True)
    run.vlm_eval_result(version).write_text(json.dumps({"episodes": episodes, "query_every": every}))


def test_status_from_the_run_directory_alone_and_the_dry_run_plan(tmp_path: Path) -> None:
    spec = validate_spec(_spec_data(episodes=3))
    plans = {p.rel: p for p in spec.plans(tmp_path / "out")}
    vlm = VLMEvalSpec(episodes=3)
    base = _finished_run(plans["base/s0"])
    (base.adapters / "v1").mkdir(parents=True)
    (base.adapters / "v1" / "adapter_config.json").write_text("{}")
    assert not vlm_eval_status(base.root, vlm).needed  # prior disabled: never, adapters or not
    run = _finished_run(plans["covr/s0"])
    status = vlm_eval_status(run.root, vlm)
    assert not status.needed and "no complete adapter version" in status.reason
    for version in (1, 2):
        (run.adapters / f"v{version}").mkdir(parents=True)
        (run.adapters / f"v{version}" / "adapter_config.json").write_text("{}")
    (run.adapters / "v3").mkdir()  # being written: not a version yet
    status = vlm_eval_status(run.root, vlm)
    assert status.needed and status.versions == [0, 1, 2] and status.missing == [0, 1, 2]
    _result(run, 0, 3, EVERY)
    _result(run, 1, 2, EVERY)  # fewer episodes than asked
    _result(run, 2, 3, EVERY)
    assert vlm_eval_status(run.root, vlm).missing == [1]
    _result(run, 1, 3, EVERY)
    assert vlm_eval_status(run.root, vlm).complete
    assert vlm_eval_status(run.root, VLMEvalSpec(episodes=3, every_frame=True)).missing == [0, 1, 2]
    run.vlm_eval_result(2).write_text("{not json")
    assert vlm_eval_status(run.root, vlm).missing == [2]

    # the plan: covr/s0's step (v2 missing), base/s0 skipped, the new runs' train commands then (covr) its step
    sweep = Sweep(spec, tmp_path / "out", backend=LocalBackend(), check_paths=False)
    sweep.prepare()
    out = io.StringIO()
    print_plan(sweep, out)
    lines = out.getvalue().splitlines()
    step = " ".join(vlm_eval_args(run.root, vlm))
    assert lines[0] == f"covr/s0: vlm-eval: finished: covr {step}"
    assert lines[1] == "base/s0: skip: finished: skipped"
    assert lines[2].startswith("covr/s1: new: covr train --preset smoke")
    assert lines[3] == ("covr/s1: then vlm-eval (when it has adapters): covr "
                        + " ".join(vlm_eval_args(plans["covr/s1"].run_dir, vlm)))
    assert lines[4].startswith("base/s1: new: covr train") and len(lines) == 5


def _mtimes(run: RunDir) -> dict[int, int]:
    return {v: p.stat().st_mtime_ns for v, p in run.vlm_eval_results()}


@pytest.mark.timeout(600)
def test_sweep_runs_the_vlm_eval_once_skips_the_base_and_reports_a_failure(
        tmp_path: Path, tiny_vlm_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocesses' torch: one thread on the shared 2-core box
    data = _spec_data(model=str(tiny_vlm_dir), episodes=1)
    spec_path, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = validate_spec(data, spec_path)
    plans = {p.rel: p for p in spec.plans(out)}
    runs = {rel: _finished_run(plan) for rel, plan in plans.items()}
    good, bad = runs["covr/s0"], runs["covr/s1"]
    build_random_adapter(str(tiny_vlm_dir), good.adapters / "v1", rank=8, seed=1)
    (bad.adapters / "v1").mkdir(parents=True)
    (bad.adapters / "v1" / "adapter_config.json").write_text("{not json")  # `covr eval` refuses it at once

    lines: list[str] = []
    sweep = Sweep(spec, out, LocalBackend(), max_parallel=2, retries=1, poll_s=0.2, echo=lines.append,
                  check_paths=False)
    summary = sweep.run()
    text = "\n".join(lines)
    assert (summary["done"], summary["failed"], summary["vlm_failed"]) == (4, 0, 1), text
    entries = {e["run_dir"]: e for e in read_sweep_file(out / "sweep.json")["runs"]}
    # the step ran for the good run: one result per version (v0 = base model, v1), the requested episodes
    assert [v for v, _ in good.vlm_eval_results()] == [0, 1]
    for _, path in good.vlm_eval_results():
        result = json.loads(path.read_text())
        assert result["episodes"] == 1 and result["query_every"] == EVERY and result["actor"] == "vlm"
    assert entries["covr/s0"]["state"] == "done" and entries["covr/s0"]["vlm_eval"]["state"] == "done"
    assert entries["covr/s0"]["vlm_eval"]["attempts"] == 1 and entries["covr/s0"]["vlm_eval"]["written"] == 2
    assert "covr s0: vlm-eval" in text and "VLM eval running, 0/2 versions" in text
    assert "VLM eval running, 1/2 versions" in text  # a line when v0's result is written
    assert "covr s0: done    env steps 40/40 (100%), return -; VLM eval done, 2/2 versions" in text
    # prior disabled: skipped, nothing written
    for rel in ("base/s0", "base/s1"):
        assert entries[rel]["state"] == "done" and entries[rel]["vlm_eval"]["state"] == "skipped"
        assert "prior.enabled=false" in entries[rel]["vlm_eval"]["message"]
        assert runs[rel].vlm_eval_results() == []
    # the broken adapter: the step failed, retried once (--retries 1), the run itself still done
    failed = entries["covr/s1"]
    assert failed["state"] == "done" and failed["vlm_eval"]["state"] == "failed", failed
    assert failed["vlm_eval"]["attempts"] == 2 and failed["vlm_eval"]["exit_code"] not in (0, None)
    assert "covr eval --actor vlm exited with exit code" in failed["vlm_eval"]["message"]
    assert run_status(bad.root).status == "done" and bad.vlm_eval_results() == []
    log = (bad.root / "sweep.log").read_text()
    assert log.count("=== covr sweep vlm-eval attempt") == 2 and "adapter_config.json" in log
    assert "VLM evaluation failed: covr/s1" in text and "1 VLM evaluations failed" in text
    before = _mtimes(good)

    # the next sweep: nothing to do for covr/s0 (its results are complete), covr/s1's step again
    assert main(["sweep", str(spec_path), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    assert plan[0] == "covr/s0: skip: finished: skipped"
    assert plan[2] == f"covr/s1: vlm-eval: finished: covr {' '.join(vlm_eval_args(bad.root, spec.vlm_eval))}"
    lines.clear()
    summary = Sweep(spec, out, LocalBackend(), poll_s=0.2, echo=lines.append, check_paths=False).run()
    assert (summary["done"], summary["vlm_failed"]) == (4, 1)
    assert "3 finished (skipped), 0 to resume, 0 to start, 0 running elsewhere (followed), 1 finished with a VLM " \
           "evaluation to run" in lines[0]
    assert _mtimes(good) == before  # not rerun
    entries = {e["run_dir"]: e for e in read_sweep_file(out / "sweep.json")["runs"]}
    assert entries["covr/s0"]["vlm_eval"] == dict(entries["covr/s0"]["vlm_eval"], state="done", attempts=1)
    assert entries["covr/s1"]["vlm_eval"]["attempts"] == 3
    assert (bad.root / "sweep.log").read_text().count("=== covr sweep vlm-eval attempt") == 3


def test_the_shipped_example_spec_evaluates_the_vlm() -> None:
    """cluster/sweeps/covr_vs_base.yaml: 5 episodes per adapter version, at the prior's own cadence."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "cluster" / "sweeps" / "covr_vs_base.yaml")
    assert spec.vlm_eval == VLMEvalSpec(episodes=5, every_frame=False)


class _FakeJobClient:
    """What JobsBackend calls of ``JobSubmissionClient``, recording the submissions."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        return kwargs["submission_id"]


def test_jobs_mode_submits_the_step_as_a_job_with_the_prior_gpus(tmp_path: Path) -> None:
    from covr_ray.sweep.backends import JobsBackend

    pytest.importorskip("ray.job_submission", reason="ray[default] is not installed")
    spec = validate_spec(_spec_data(episodes=2, every_frame=True))
    plan = spec.plans(tmp_path / "out")[0]
    backend = JobsBackend.__new__(JobsBackend)  # no job server: the client is the fake
    backend.client, backend.runtime_env, backend.timeout_s, backend.entrypoint = _FakeJobClient(), None, 5.0, "covr"
    handle = backend.launch(plan, vlm_eval_args(plan.run_dir, spec.vlm_eval), 3, what="vlm-eval", num_gpus=0.5)
    job = backend.client.submitted[0]
    assert handle.job_id == job["submission_id"] and job["submission_id"].startswith("covr-sweep-vlm-eval-covr-s0-a3-")
    assert job["entrypoint"] == (f"covr eval {plan.run_dir} --actor vlm --adapter all --episodes 2 --every-frame "
                                 "--json")
    assert job["entrypoint_num_gpus"] == 0.5 and job["metadata"]["step"] == "vlm-eval"
    backend.start(plan, resume=True, attempt=1)  # a training run: no entrypoint GPUs, the id as before
    train = backend.client.submitted[1]
    assert "entrypoint_num_gpus" not in train and train["submission_id"].startswith("covr-sweep-covr-s0-a1-")
