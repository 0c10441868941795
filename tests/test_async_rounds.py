"""Asynchronous fine-tune rounds (``schedule.async_rounds``, :mod:`covr_ray.loop.rounds`).

The LoRA trainer is made slow on purpose with the test-only hook ``COVR_TEST_ONLY_LORA_ROUND_DELAY_S``
(:mod:`covr_ray.lora.actor`: the real trainer sleeps that long at the start of each round). With
asynchronous rounds the env steps and the SAC updates go on while the VLM trains, the adapter version moves
when the round is collected, and ``loop/learner_stall_s`` stays far below the round's length; with
``async_rounds=false`` the learner stalls for the whole round. A checkpoint taken while a round is in flight
records it, and a fresh run resumed from that checkpoint submits it again and completes it.

Timing bounds are derived from the delay only: the synchronous stall is at least the delay (the driver waited
through the sleep), the asynchronous one less than half of it (building the kept set of a smoke round takes
about a second here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from covr_ray.config import ScheduleSection, load_config
from covr_ray.errors import CheckpointError, ConfigError
from covr_ray.loop.rounds import RoundInFlight, adapter_of_kept_set, adapter_of_round
from covr_ray.lora.actor import TEST_ROUND_DELAY_ENV, round_delay_from_env
from covr_ray.lora.versions import ADAPTER_CONFIG, META_FILE
from covr_ray.metrics import read_csv_metrics

# Long enough to dwarf an async round's own stall (0.2-0.5 s measured, loaded box). The rounds are spaced so
# that a fast loop cannot reach the run's end while round 0 sleeps: round points at 350 / 650 / 1,250 env
# steps (50 warm-up, then 300, 300, 600) and the end at 900, 550 steps after round 0 is submitted, i.e. room
# for a loop of up to ~65 env steps/s (a quiet 2-core box ran 34/s with the env runner sampling during the
# updates; with the old spacing, rounds at 150 / 250 and the end at 420, it reached 424 while round 0 slept).
DELAY_S = 8.0
SMOKE = ["schedule.checkpoint_every=100000", "schedule.eval_every=100000", "schedule.eval_episodes=1",
         "schedule.first_interval=300", "logging.tensorboard=false"]


# --- without Ray ------------------------------------------------------------------------------------------


def test_async_rounds_is_on_by_default_and_typed():
    assert ScheduleSection().async_rounds is True and load_config("smoke").schedule.async_rounds is True
    assert load_config("smoke", ["schedule.async_rounds=false"]).schedule.async_rounds is False
    with pytest.raises(ConfigError, match="schedule.async_rounds"):
        ScheduleSection(async_rounds="yes").validate("schedule")  # type: ignore[arg-type]


def test_test_only_delay_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.delenv(TEST_ROUND_DELAY_ENV, raising=False)
    assert round_delay_from_env() == 0.0
    monkeypatch.setenv(TEST_ROUND_DELAY_ENV, "2.5")
    assert round_delay_from_env() == 2.5
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(TEST_ROUND_DELAY_ENV, bad)
        with pytest.raises(ConfigError, match=TEST_ROUND_DELAY_ENV):
            round_delay_from_env()


def test_in_flight_record_round_trips_relative_to_the_run_and_bad_records_are_refused(tmp_path):
    root = tmp_path / "run"
    record = RoundInFlight(3, root / "rounds" / "round-003-step900", 42, [root / "df" / "runner-1" / "df-1.parquet"],
                           900, stall_s=0.7)
    state = json.loads(json.dumps(record.to_state(root)))
    assert state["kept_set"] == "rounds/round-003-step900" and state["df_shards"] == ["df/runner-1/df-1.parquet"]
    moved = tmp_path / "moved"  # a run directory moved between the stop and the resume
    back = RoundInFlight.from_state(state, moved)
    assert (back.round_index, back.kept_rows, back.submitted_at, back.stall_s) == (3, 42, 900, 0.7)
    assert back.kept_set == moved / "rounds" / "round-003-step900" and back.resumed and back.ref is None
    for bad in ({**state, "version": 99}, {k: v for k, v in state.items() if k != "kept_set"},
                {**state, "round": -1}, "round 3"):
        with pytest.raises(CheckpointError, match="round_in_flight"):
            RoundInFlight.from_state(bad, root)


def test_a_resumed_round_is_collected_only_from_a_complete_adapter_of_its_kept_set(tmp_path):
    adapters, kept_a, kept_b = tmp_path / "adapters", tmp_path / "rounds" / "a", tmp_path / "rounds" / "b"

    def version(name: str, kept: Path, complete: bool) -> Path:
        path = adapters / name
        path.mkdir(parents=True)
        (path / META_FILE).write_text(json.dumps({"kept_set": str(kept)}))
        if complete:
            (path / ADAPTER_CONFIG).write_text("{}")
        return path

    v1 = version("v1", kept_a, complete=True)
    version(".v2.abc.tmp", kept_b, complete=True)  # a temp directory of a save cut short: not a version
    version("v3", kept_b, complete=False)  # no adapter_config.json: not complete
    assert adapter_of_kept_set(adapters, kept_a) == (1, v1)
    assert adapter_of_kept_set(adapters, kept_b) is None
    assert adapter_of_kept_set(tmp_path / "none", kept_a) is None


def test_a_round_done_after_the_checkpoint_is_found_by_its_index_and_unfinished_kept_sets_are_set_aside(tmp_path):
    from covr_ray.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    for name in ("round-000-step150", "round-001-step250", "round-001-step350", "round-002-step450"):
        (run.rounds / name).mkdir(parents=True)
        (run.rounds / name / "part-00000.parquet").write_bytes(b"rows")

    def version(n: int, kept: str, complete: bool = True) -> Path:
        path = run.adapters / f"v{n}"
        path.mkdir(parents=True)
        (path / META_FILE).write_text(json.dumps({"kept_set": f"/elsewhere/rounds/{kept}"}))  # the run moved since
        if complete:
            (path / ADAPTER_CONFIG).write_text("{}")
        return path

    version(1, "round-000-step150")
    v2 = version(2, "round-001-step350")  # round 1 failed at 250, was retried at 350, and completed
    version(3, "round-002-step450", complete=False)
    assert adapter_of_round(run, 1) == (2, v2, run.rounds / "round-001-step350")
    assert adapter_of_round(run, 2) is None and adapter_of_round(run, 7) is None

    moved = run.set_aside_round_dirs(1, keep=run.rounds / "round-001-step350")
    assert sorted(p.name for p in moved) == ["round-001-step250.set-aside-1", "round-002-step450.set-aside-1"]
    assert [p.name for _i, _s, p in run.round_dirs()] == ["round-000-step150", "round-001-step350"]
    assert all((p / "part-00000.parquet").read_bytes() == b"rows" for p in moved)  # nothing written is lost
    (run.rounds / "round-002-step450").mkdir()  # written again, and set aside again: a new name
    assert [p.name for p in run.set_aside_round_dirs(2)] == ["round-002-step450.set-aside-2"]


# --- the loop ---------------------------------------------------------------------------------------------


def _one_more_iteration(run) -> None:
    total = run.cfg.schedule.total_env_steps
    assert run.env_steps < total, f"the run reached its {total} env steps before the test saw what it waits for"
    run.run(stop_at_env_steps=run.env_steps + 1)


@pytest.fixture(scope="module")
def slow_rounds(ray_session, tiny_vlm_dir, tmp_path_factory):
    """Run A (async): round 0 runs while the loop trains; round 1 is in flight when a checkpoint is taken and
    the run is closed; a fresh run resumed from that checkpoint completes it. Run B: the same with
    ``async_rounds=false``, until round 0 is done."""
    from covr_ray.loop.orchestrator import CovrRun

    tmp = tmp_path_factory.mktemp("async")
    out: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TEST_ROUND_DELAY_ENV, str(DELAY_S))
        cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={tmp / 'a'}",
                                    "schedule.total_env_steps=900", *SMOKE])  # round 2 would be at 1,250
        run = CovrRun.new(cfg, progress=False).setup()
        try:
            run.run(stop_at_env_steps=300)
            early = run.checkpoint()  # before round 0's point: nothing submitted yet
            run.run(stop_at_env_steps=350)  # the first round point (50 warm-up + 300)
            while run.rounds.in_flight is None:
                _one_more_iteration(run)
            first = run.rounds.in_flight
            out["round0"] = {"index": first.round_index, "submitted_at": first.submitted_at,
                             "consumed": set(first.df_shards), "version_at_submit": run.adapter_version}
            seen: set = set()
            while run.rounds.in_flight is first:  # the loop goes on until round 0 is collected
                seen |= set(run.run_dir.df_shards())
                _one_more_iteration(run)
            out["round0"].update(history=dict(run.history[-1]), version_after=run.adapter_version,
                                 df_after=set(run.run_dir.df_shards()), seen_during=seen)
            while run.rounds.in_flight is None or run.rounds.in_flight.round_index != 1:
                _one_more_iteration(run)
            second = run.rounds.in_flight
            out["round1"] = {"consumed": set(second.df_shards), "submitted_at": second.submitted_at,
                             "kept_set": second.kept_set}
            out["checkpoint"] = run.checkpoint()  # mid-round
            out["before_close"] = {"rounds": run.schedule.round, "version": run.adapter_version}
        finally:
            run.close()
        # what a crash before that last checkpoint leaves: the checkpoint before round 0; round 0's kept set and
        # adapter (it completed after that checkpoint); round 1's kept set without an adapter (its trainer was
        # killed mid-round)
        shutil.copytree(tmp / "a", tmp / "x")
        shutil.rmtree(tmp / "x" / "checkpoints" / out["checkpoint"].name)
        (tmp / "x" / "checkpoints" / "LATEST").write_text(early.name + "\n")
        out["early_steps"] = int(early.name.split("-")[1])
        resumed = CovrRun.resume(tmp / "a", progress=False).setup()
        try:
            in_flight = resumed.rounds.in_flight
            out["resumed_setup"] = {"in_flight": None if in_flight is None else in_flight.round_index,
                                    "resubmitted": in_flight is not None and in_flight.resumed,
                                    "round": resumed.schedule.round, "version": resumed.adapter_version,
                                    "env_steps": resumed.env_steps}
            out["final"] = resumed.run()
            out["resumed_history"] = [dict(h) for h in resumed.history]
            out["df_final"] = set(resumed.run_dir.df_shards())
        finally:
            resumed.close()
        out["metrics_a"] = read_csv_metrics(tmp / "a" / "metrics.csv")

        cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={tmp / 'b'}",
                                    "schedule.total_env_steps=400", "schedule.async_rounds=false", *SMOKE])
        run = CovrRun.new(cfg, progress=False).setup()
        try:
            while not run.history:
                _one_more_iteration(run)
            out["sync"] = dict(run.history[0])
        finally:
            run.close()
    crashed = CovrRun.resume(tmp / "x", progress=False).setup()  # no delay now: round 1 trains at once
    try:
        out["crashed"] = {"round": crashed.schedule.round, "in_flight": crashed.rounds.in_flight,
                          "env_steps": crashed.env_steps, "version": crashed.adapter_version,
                          "setup_history": [dict(h) for h in crashed.history],
                          "set_aside": sorted(p.name for p in (tmp / "x" / "rounds").glob("*.set-aside-*"))}
        while not any(h["round"] == 1.0 and h["round/trained"] == 1.0 for h in crashed.history):
            _one_more_iteration(crashed)
        out["crashed"].update(history=[dict(h) for h in crashed.history],
                              rounds=[p.name for _i, _s, p in crashed.run_dir.round_dirs()])
    finally:
        crashed.close()
    return out


def test_training_goes_on_during_an_async_round_and_the_adapter_moves_after_it(slow_rounds):
    r0 = slow_rounds["round0"]
    h = r0["history"]
    assert r0["index"] == 0 and r0["submitted_at"] >= 350 and h["round"] == 0.0
    assert h["round/failed"] == 0.0 and h["round/trained"] == 1.0 and h["schedule/round"] == 1.0
    assert r0["version_at_submit"] == -1 and r0["version_after"] == 1 == h["lora/adapter_version"]
    assert h["round/wall_s"] >= DELAY_S  # the round really took the delay...
    assert h["round/env_steps_during"] > 0 and h["env_steps"] > r0["submitted_at"]  # ...while env steps went on
    samples = slow_rounds["metrics_a"]["learner/samples_trained"]  # ...and SAC updates
    at_submit = max(v for step, v in samples if step <= r0["submitted_at"])
    at_collect = max(v for step, v in samples if step <= h["env_steps"])
    assert at_collect > at_submit
    # only the shards the kept set was built from are consumed: rows written during the round stay for the next
    assert not (r0["consumed"] & r0["df_after"]) and h["df/cleared_shards"] == len(r0["consumed"]) >= 1
    assert (r0["seen_during"] - r0["consumed"]) <= r0["df_after"]


def test_learner_stall_is_about_zero_async_and_the_round_length_sync(slow_rounds):
    async_stall = slow_rounds["round0"]["history"]["loop/learner_stall_s"]
    sync = slow_rounds["sync"]
    assert sync["round/failed"] == 0.0 and sync["round/trained"] == 1.0 and sync["round/env_steps_during"] == 0.0
    assert sync["loop/learner_stall_s"] >= DELAY_S  # the loop waited through the whole round
    assert sync["loop/learner_stall_s"] >= 0.95 * sync["round/wall_s"]
    assert 0.0 <= async_stall < DELAY_S / 2 < sync["loop/learner_stall_s"]
    stalls = slow_rounds["metrics_a"]["loop/learner_stall_s"]
    assert stalls and all(v >= 0 for _, v in stalls)  # one per collected round, in the metrics sink


def test_a_checkpoint_mid_round_records_it_and_a_resumed_run_completes_it(slow_rounds):
    from covr_ray.run_dir import read_loop_state

    saved = read_loop_state(slow_rounds["checkpoint"])
    r1 = slow_rounds["round1"]
    assert saved["schedule"]["round"] == 1 == slow_rounds["before_close"]["rounds"]
    record = saved["round_in_flight"]
    assert record["round"] == 1 and record["submitted_at"] == r1["submitted_at"]
    assert Path(slow_rounds["checkpoint"]).parents[1] / record["kept_set"] == r1["kept_set"]
    setup = slow_rounds["resumed_setup"]  # the trainer was killed mid-sleep: the round is submitted again
    assert setup == {"in_flight": 1, "resubmitted": True, "round": 1, "version": 1,
                     "env_steps": saved["env_steps"]}
    (done,) = [h for h in slow_rounds["resumed_history"] if h["round"] == 1.0]
    assert done["round/resumed"] == 1.0 and done["round/failed"] == 0.0 and done["lora/adapter_version"] == 2.0
    assert done["df/cleared_shards"] == len(r1["consumed"]) >= 1 and not (r1["consumed"] & slow_rounds["df_final"])
    final = slow_rounds["final"]
    assert final["rounds"] == 2 and final["adapter_version"] == 2 and final["env_steps"] >= 900
    assert final["failed_rounds"] == 0


def test_rounds_done_after_the_checkpoint_are_collected_and_unfinished_ones_set_aside_and_rerun(slow_rounds):
    """Resumed from a checkpoint taken before round 0: round 0, which completed after it, is collected at setup
    from its adapter (not rebuilt); round 1's kept set, whose trainer never finished, is set aside and round 1
    runs again. Before the fix a rebuilt round's kept set could collide with the one left by the crash (same
    round, same step: FileExistsError, and the run could not resume)."""
    crashed, r0, r1 = slow_rounds["crashed"], slow_rounds["round0"], slow_rounds["round1"]
    assert crashed["env_steps"] == slow_rounds["early_steps"] < r0["submitted_at"]
    (rolled,) = crashed["setup_history"]
    assert rolled["round"] == 0.0 and rolled["round/resumed"] == 1.0 and rolled["round/failed"] == 0.0
    assert (crashed["round"], crashed["in_flight"], crashed["version"]) == (1, None, 1)
    assert crashed["set_aside"] == [f"{r1['kept_set'].name}.set-aside-1"]  # kept, under another name
    done = [h for h in crashed["history"] if h["round"] == 1.0]
    assert len(done) == 1 and done[0]["round/failed"] == 0.0 and done[0]["round/resumed"] == 0.0
    assert done[0]["lora/adapter_version"] == 2.0
    assert [name.split("-step")[0] for name in crashed["rounds"]] == ["round-000", "round-001"]


def test_wait_at_next_round_holds_the_loop_at_the_next_point_until_the_round_is_in(ray_session, tiny_vlm_dir,
                                                                                  tmp_path, monkeypatch):
    """``schedule.wait_at_next_round``: round 0 (submitted at 150) sleeps 30 s; the loop trains on to the next
    point (250), waits there for round 0, then submits round 1 at once: the lag is at most one interval."""
    from covr_ray.loop.orchestrator import CovrRun

    monkeypatch.setenv(TEST_ROUND_DELAY_ENV, "30")
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", f"run_dir={tmp_path / 'c'}", *SMOKE,
                                "schedule.first_interval=100", "schedule.total_env_steps=440",  # points 150, 250
                                "schedule.wait_at_next_round=true"])
    run = CovrRun.new(cfg, progress=False).setup()
    try:
        run.run(stop_at_env_steps=150)
        while run.rounds.in_flight is None or run.rounds.in_flight.round_index != 1:
            _one_more_iteration(run)
        second = run.rounds.in_flight.submitted_at
    finally:
        run.close()
    (h,) = [x for x in run.history if x["round"] == 0.0]
    step = run.cfg.sac.rollout_fragment_length * 2  # what one iteration can count (a fragment stored, one sampled)
    assert h["round/trained"] == 1.0 and h["round/wall_s"] >= 30.0
    assert 250 <= h["env_steps"] < 250 + step, h  # collected at the next point: the loop waited there ...
    assert h["loop/learner_stall_s"] > 0.0
    assert second == h["env_steps"]  # ... and round 1, due since 250, was submitted as round 0 came in


def test_the_dashboard_shows_the_learner_stall():
    dash = json.loads((Path(__file__).resolve().parents[1] / "cluster" / "grafana" / "covr_dashboard.json").read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in dash["panels"]}
    assert "ray_covr_loop_learner_stall_s{" in exprs["Learner stall per round"]
