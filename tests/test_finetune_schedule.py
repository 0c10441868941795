"""Fine-tune schedule: psi_{c+1} = psi_c + psi_c * c, guidance after cold start, checkpointable state."""

from __future__ import annotations

import json

import pytest

from covr_ray.config import ScheduleConfig, load_config
from covr_ray.errors import CheckpointError, FinetuneDataError
from covr_ray.finetune.schedule import FinetuneSchedule, round_points


def test_first_points_match_recurrence():
    # psi: 100, 100 (+100*0), 200 (+100*1), 600 (+200*2), 2400 (+600*3)
    assert round_points(100, 5) == [100, 200, 400, 1000, 3400]
    assert round_points(2500, 6) == [2500, 5000, 10000, 25000, 85000, 385000]
    assert round_points(5000, 5) == [5000, 10000, 20000, 50000, 170000]
    assert round_points(10000, 5, max_interval=30000) == [10000, 20000, 40000, 70000, 100000]


@pytest.mark.parametrize("preset,points", [
    ("smoke", [100, 200, 400]), ("driving-hw", [5000, 10000, 20000, 50000]),
    ("dmc-cartpole-swingup", [2500, 5000, 10000, 25000, 85000]),
    ("dmc-walker-run", [10000, 20000, 40000, 100000, 340000])])
def test_preset_points_as_documented(preset, points):
    cfg = load_config(preset).schedule
    sched = FinetuneSchedule(cfg)
    seen, guidance = [], []
    for step in range(0, cfg.total_env_steps + 1, 100):
        if sched.due(step):
            seen.append(step)
            sched.complete_round(step)
            guidance.append(sched.guidance_on)
    assert seen == points
    assert guidance == [i + 1 >= cfg.cold_start_rounds for i in range(len(points))]


def test_guidance_after_cold_start_and_state_round_trip():
    cfg = ScheduleConfig(first_interval=10, cold_start_rounds=2)
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
    cfg = ScheduleConfig(first_interval=10)
    good = FinetuneSchedule(cfg).to_dict()
    with pytest.raises(CheckpointError, match="first_interval"):
        FinetuneSchedule.from_dict(ScheduleConfig(first_interval=20), good)
    with pytest.raises(CheckpointError, match="round"):
        FinetuneSchedule.from_dict(cfg, {**good, "round": -1})
    with pytest.raises(CheckpointError, match="lacks"):
        FinetuneSchedule.from_dict(cfg, {k: v for k, v in good.items() if k != "interval"})
    with pytest.raises(CheckpointError, match="version"):
        FinetuneSchedule.from_dict(cfg, [1, 2])
