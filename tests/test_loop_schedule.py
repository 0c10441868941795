"""Fine-tune schedule: psi_{c+1} = psi_c + psi_c * c, guidance after cold start, checkpointable state."""

from __future__ import annotations

import json

import pytest

from covr_ray.config import ScheduleSection, load_config
from covr_ray.errors import CheckpointError, FinetuneDataError
from covr_ray.loop.schedule import FinetuneSchedule, round_points


def test_first_points_match_recurrence():
    # psi: 100, 100 (+100*0), 200 (+100*1), 600 (+200*2), 2400 (+600*3)
    assert round_points(100, 5) == [100, 200, 400, 1000, 3400]
    assert round_points(2500, 6) == [2500, 5000, 10000, 25000, 85000, 385000]
    assert round_points(5000, 5) == [5000, 10000, 20000, 50000, 170000]
    assert round_points(10000, 5, max_interval=30000) == [10000, 20000, 40000, 70000, 100000]


@pytest.mark.parametrize("preset,warmup,points", [
    ("smoke", 50, [150, 250]), ("demo", 100, [350, 600, 1100]),
    ("driving-hw", 1000, [6000, 11000, 21000, 51000]),
    ("dmc-cartpole-swingup", 8000, [10500, 13000, 18000, 33000, 93000]),
    ("dmc-walker-walk", 2000, [4500, 7000, 12000, 27000, 87000]),
    ("dmc-walker-run", 2000, [12000, 22000, 42000, 102000, 342000])])
def test_preset_points_as_documented(preset, warmup, points):
    """The round clock starts after the uniform-random warm-up (sac.learning_starts agent steps x action
    repeat): on cartpole (repeat 8, 1000 warm-up agent steps = 8000 env steps) the old clock put the first
    two rounds (2500, 5000) inside the warm-up, teaching the VLM random actions."""
    full = load_config(preset)
    cfg = full.schedule
    start = full.sac.learning_starts * full.env.action_repeat  # what CovrRun.setup gives the schedule
    assert start == warmup
    sched = FinetuneSchedule(cfg, start_at=start)
    seen, guidance = [], []
    for step in range(0, cfg.total_env_steps + 1, 50):
        if sched.due(step):
            seen.append(step)
            sched.complete_round(step)
            guidance.append(sched.guidance_on)
    assert seen == points and min(seen) > start
    assert guidance == [i + 1 >= cfg.cold_start_rounds for i in range(len(points))]


def test_failed_round_does_not_count_and_is_retried_one_interval_later():
    cfg = ScheduleSection(first_interval=10, cold_start_rounds=1)
    s = FinetuneSchedule(cfg, start_at=5)
    assert s.next_round_at == 15
    with pytest.raises(FinetuneDataError, match="before it was due"):
        s.fail_round(14)
    m = s.fail_round(16)
    assert (s.round, s.failed, s.next_round_at, s.interval, s.guidance_on) == (0, 1, 25, 10, False)
    assert m["schedule/failed_rounds"] == 1 and m["schedule/round"] == 0
    s.fail_round(40)  # noticed very late: the retry is never due at once, and stays anchored
    assert s.next_round_at == 45 and not s.due(40)
    s.complete_round(45)
    assert (s.round, s.guidance_on, s.next_round_at) == (1, True, 55)
    restored = FinetuneSchedule.from_dict(cfg, json.loads(json.dumps(s.to_dict())))
    assert (restored.round, restored.failed, restored.next_round_at, restored.start_at) == (1, 2, 55, 5)


def test_version_1_state_restores_without_offset_or_failures():
    cfg = ScheduleSection(first_interval=10)
    old = {"version": 1, "round": 2, "next_round_at": 40, "interval": 20, "first_interval": 10}
    s = FinetuneSchedule.from_dict(cfg, old)
    assert (s.round, s.failed, s.start_at, s.next_round_at) == (2, 0, 0, 40)
    with pytest.raises(FinetuneDataError, match="start_at"):
        FinetuneSchedule(cfg, start_at=-1)


def test_guidance_after_cold_start_and_state_round_trip():
    cfg = ScheduleSection(first_interval=10, cold_start_rounds=2)
    s = FinetuneSchedule(cfg)
    assert not s.guidance_on and s.next_round_at == 10 and s.round == 0
    with pytest.raises(FinetuneDataError, match="before it was due"):
        s.complete_round(9)
    m = s.complete_round(12)  # late: the next point stays anchored at 10 + 10
    assert m["schedule/round"] == 1 and s.next_round_at == 20 and not s.guidance_on
    s.complete_round(20)
    assert s.guidance_on and s.next_round_at == 40
    restored = FinetuneSchedule.from_dict(cfg, json.loads(json.dumps(s.to_dict())))
    assert (restored.round, restored.next_round_at, restored.interval, restored.guidance_on) == (2, 40, 20, True)
    restored.complete_round(40)
    assert restored.next_round_at == 40 + 60


def test_state_refuses_bad_checkpoints():
    cfg = ScheduleSection(first_interval=10)
    good = FinetuneSchedule(cfg).to_dict()
    with pytest.raises(CheckpointError, match="first_interval"):
        FinetuneSchedule.from_dict(ScheduleSection(first_interval=20), good)
    with pytest.raises(CheckpointError, match="round"):
        FinetuneSchedule.from_dict(cfg, {**good, "round": -1})
    with pytest.raises(CheckpointError, match="lacks"):
        FinetuneSchedule.from_dict(cfg, {k: v for k, v in good.items() if k != "interval"})
    with pytest.raises(CheckpointError, match="version"):
        FinetuneSchedule.from_dict(cfg, [1, 2])
