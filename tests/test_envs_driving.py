"""Semantics of the embedded driving scenarios (highway-env): reward, distance, termination, traffic, #GP hazard."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from covr_envs import make_env
from covr_envs.driving_hazard import PEDESTRIAN_COLOR, segment_hits_box


def hw(seed: int = 0, **kw: Any) -> Any:
    return make_env("driving-hw", seed, image_size=32, **kw)


def test_reward_is_progress_minus_steer_and_brake_penalties() -> None:
    env = hw(vehicles=0, steer_penalty=5.0, brake_penalty=1.0)
    _, info = env.reset()
    prev = info["distance_m"]
    for action in ([0.0, 0.0], [0.05, 0.3], [-0.05, -0.5], [0.0, 1.0]):
        _, reward, terminated, _, info = env.step(np.array(action, np.float32))
        assert not terminated
        progress = info["distance_m"] - prev
        prev = info["distance_m"]
        steer, tb = action
        assert reward == pytest.approx(progress - 0.2 * (5.0 * abs(steer) + 1.0 * max(-tb, 0.0)), abs=1e-9)
    # coasting at 20 m/s for 0.2 s is 4 m of distance
    env2 = hw(vehicles=0)
    env2.reset()
    _, r, _, _, info = env2.step(np.zeros(2, np.float32))
    assert info["distance_m"] == pytest.approx(4.0, abs=1e-6) and r == pytest.approx(4.0, abs=1e-6)
    assert info["speed_mps"] == pytest.approx(20.0)


def test_brake_stops_without_reversing_and_throttle_speeds_up() -> None:
    env = hw(vehicles=0)
    env.reset()
    speeds = [env.step(np.array([0.0, -1.0], np.float32))[4]["speed_mps"] for _ in range(20)]
    assert speeds[-1] == pytest.approx(0.0, abs=1e-6) and min(speeds) >= 0.0
    before = env.step(np.zeros(2, np.float32))[4]["distance_m"]
    assert env.step(np.zeros(2, np.float32))[4]["distance_m"] == pytest.approx(before)
    fast = [env.step(np.array([0.0, 1.0], np.float32))[4]["speed_mps"] for _ in range(5)]
    assert fast == sorted(fast) and fast[-1] == pytest.approx(3.0)  # 5 * 0.2 s * 3 m/s^2


def test_collision_ends_episode_with_penalty() -> None:
    from highway_env.vehicle.kinematics import Vehicle

    env = hw(vehicles=0, collision_penalty=10.0)
    env.reset()
    core = env.unwrapped
    ego = core.ego
    wall = Vehicle(core.road, ego.position + np.array([15.0, 0.0]), heading=0.0, speed=0.0)
    core.road.vehicles.append(wall)
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        if terminated:
            break
    assert terminated and not truncated and info["collision"] and not info["offroad"]
    assert reward < -5.0  # at most ~4 m of progress this step, minus the 10 m penalty


def test_leaving_the_road_ends_episode() -> None:
    env = hw(vehicles=0)
    env.reset()
    for _ in range(50):
        _, _, terminated, _, info = env.step(np.array([1.0, 0.0], np.float32))
        if terminated:
            break
    assert terminated and info["offroad"] and not info["collision"]


def test_traffic_is_recycled_around_the_ego() -> None:
    env = hw(vehicles=12)
    env.reset()
    core = env.unwrapped
    assert len(core._traffic) == 12
    core.ego.position[0] += 2000.0  # the ego "drove" 2 km: every car is far behind
    core._recycle_traffic()
    gaps = [car.position[0] - core.ego.position[0] for car in core._traffic]
    assert len(gaps) == 12 and all(-core.params.traffic_behind_m < g <= core.params.traffic_ahead_m for g in gaps)
    assert all(any(v is car for v in core.road.vehicles) for car in core._traffic)
    assert len(core.road.vehicles) == 13


def test_segment_box_intersection() -> None:
    lo, hi = np.array([0.0, 0.0]), np.array([5.0, 2.0])
    assert segment_hits_box(np.array([-5.0, 1.0]), np.array([10.0, 1.0]), lo, hi)
    assert not segment_hits_box(np.array([-5.0, 3.0]), np.array([10.0, 3.0]), lo, hi)
    assert segment_hits_box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), lo, hi)
    assert not segment_hits_box(np.array([-3.0, -1.0]), np.array([-1.0, 1.0]), lo, hi)


def _gp(seed: int, **kw: Any) -> Any:
    kw.setdefault("hazard_prob", 1.0)
    kw.setdefault("vehicles", 0)
    return make_env("driving-gp", seed, image_size=84, max_episode_steps=200, **kw)


def _red_pixels(frame: np.ndarray) -> int:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return int(np.sum((r > 150) & (g < 110) & (b < 110)))


def test_gp_hidden_pedestrian_enters_the_ego_lane_and_is_hit_at_constant_speed() -> None:
    env = _gp(3)
    env.reset()
    core = env.unwrapped
    first = core._sites[0]
    assert first.pedestrian is not None
    lane_y = core.lane_center_y(core.ego_lane)
    park_y = core.lane_center_y(core.parking_lane)
    hidden_near, entered, visible_drawn, info = False, False, False, {}
    for _ in range(200):
        frame, _, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        ped = first.pedestrian
        ahead = ped.position[0] - core.ego.position[0]
        if ped.position[1] >= park_y and 10 < ahead < 40:  # still in the gap of the parked row
            assert not info["hazard_visible"] and _red_pixels(env.render()) == 0, "the pedestrian is hidden"
            hidden_near = True
        if first.state == "walking" and abs(ped.position[1] - lane_y) < 2.0 and ahead > 0:
            entered = True
        if info["hazard_visible"] and 0 < ahead < 25 and _red_pixels(env.render()) > 0:
            visible_drawn = True
        if terminated or truncated:
            break
    assert hidden_near, "the pedestrian waited hidden while the ego approached"
    assert entered, "the pedestrian walked into the ego lane ahead of the ego"
    assert visible_drawn, "once out of the parked row it is drawn"
    assert terminated and info["collision"], "holding 10 m/s the ego hits it"


def test_gp_hazard_is_avoidable_by_braking_when_seen() -> None:
    env = _gp(3, ego_speed=6.0)
    env.reset()
    core = env.unwrapped
    first = core._sites[0]
    lane_y = core.lane_center_y(core.ego_lane)
    info: dict = {}
    braked, crossed = 0, False
    for _ in range(200):
        brake = bool(info.get("hazard_visible") and info.get("hazard_active"))
        braked += brake
        _, _, terminated, _, info = env.step(np.array([0.0, -1.0 if brake else 0.0], np.float32))
        assert not terminated, "braking when the pedestrian appears avoids it at 6 m/s"
        crossed = crossed or first.state == "gone" or first.pedestrian.position[1] < lane_y - 2.0
        if crossed:
            break
    assert braked > 0 and crossed, "the pedestrian crossed the whole ego lane in front of the stopped ego"


def test_gp_sites_appear_ahead_and_are_dropped_behind() -> None:
    env = _gp(5, ego_speed=20.0, hazard_prob=0.0, site_gap_m=(40.0, 60.0))
    env.reset()
    core = env.unwrapped
    for _ in range(60):  # 20 m/s * 0.2 s * 60 = 240 m
        _, _, terminated, _, _ = env.step(np.zeros(2, np.float32))
        assert not terminated
    ego_x = core.ego.position[0]
    assert core._sites and all(s.x_end >= ego_x - core.params.traffic_behind_m for s in core._sites)
    assert max(s.x_start for s in core._sites) > ego_x, "new parked rows keep appearing ahead"
    parked = [v for v in core.road.vehicles if getattr(v, "color", None) == (150, 150, 150)]
    assert len(parked) == sum(len(s.parked) for s in core._sites)


def test_pedestrian_colour_is_distinct() -> None:
    assert PEDESTRIAN_COLOR[0] > 150 and max(PEDESTRIAN_COLOR[1:]) < 110


def test_fast_neighbour_search_equals_highway_env() -> None:
    from highway_env.road.road import Road

    env = hw(3, vehicles=30)
    env.reset()
    core = env.unwrapped
    for _ in range(5):
        env.step(np.array([0.0, 0.5], np.float32))
    road = core.road
    others = [v for v in road.vehicles + road.objects]
    road._cache = (others, np.array([v.position for v in others]), {id(v): i for i, v in enumerate(others)})
    try:
        for vehicle in road.vehicles:
            for lane in range(core.num_lanes):
                lane_index = ("0", "1", lane)
                fast = road.neighbour_vehicles(vehicle, lane_index)
                stock = Road.neighbour_vehicles(road, vehicle, lane_index)
                assert fast[0] is stock[0] and fast[1] is stock[1]
    finally:
        road._cache = None
