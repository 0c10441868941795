"""CARLA envs against the fake CARLA server of support/carla_fake.py, plus one live test.

No CARLA server can run on the CPU machines: the env gets the real ``carla`` client module (the dev extra's
wheel) with only ``Client`` replaced by one that talks to a simulated highway, so every value type the env
builds or reads is the real one. :func:`test_fake_covers_the_real_api` checks that every name the env uses
(``covr_envs.carla_env.CARLA_API``) exists on the real client.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client wheel is not installed (pip install 'covr-ray[dev]')")

from support.carla_fake import LANE_W, Blueprint, FakeServer  # noqa: E402 (needs carla)


def carla_cfg(**over: Any) -> dict[str, Any]:
    cfg = {"host": "127.0.0.1", "port": 2000, "timeout_s": 2.0, "num_vehicles": 5, "reconnect_attempts": 3,
           "reconnect_backoff_s": 0.0, "server_start_wait_s": 0.0}
    cfg.update(over)
    return cfg


def make(name: str, fake_carla: FakeServer, seed: int = 0, **kw: Any) -> Any:
    from covr_envs import make_env

    return make_env(name, seed, image_size=32, carla=carla_cfg(**kw.pop("carla", {})), **kw)


# --- tests -------------------------------------------------------------------------------------------------

def test_missing_carla_raises_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from covr_envs import make_env
    from covr_ray.errors import DependencyMissingError

    monkeypatch.setitem(sys.modules, "carla", None)  # import carla -> ImportError
    with pytest.raises(DependencyMissingError, match=r"covr-ray\[carla\]"):
        make_env("carla-hw", 0)


def test_hw_scene_sync_mode_highway_spawn_and_traffic(fake_carla: FakeServer) -> None:
    env = make("carla-hw", fake_carla)
    obs, info = env.reset()
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8
    assert fake_carla.sync is True and fake_carla.delta == pytest.approx(0.05) and fake_carla.tm_sync is True
    assert fake_carla.loaded == ["Town04"]
    ego = env.unwrapped.ego
    assert ego.location.y > -100, "#HW must not spawn on the one-lane ramp"
    vehicles = [a for a in fake_carla.alive("vehicle.") if a is not ego]
    assert len(vehicles) == 5 and all(v.autopilot for v in vehicles)
    assert {a.type_id for a in fake_carla.alive("sensor.")} == {"sensor.camera.rgb", "sensor.other.collision"}
    frame = env.render()  # BGRA (10, 20, x) -> RGB (x, 20, 10)
    assert frame.shape == (32, 32, 3) and tuple(frame[0, 0, 1:]) == (20, 10)
    assert set(info) >= {"env_steps", "distance_m", "speed_mps", "collision", "offroad", "connection_lost"}
    env.close()


def test_reward_is_progress_minus_steer_and_distance_in_metres(fake_carla: FakeServer) -> None:
    env = make("carla-hw", fake_carla, carla={"num_vehicles": 0})
    env.reset()
    ego = env.unwrapped.ego
    ego.speed = 10.0
    _, r0, _, _, info0 = env.step(np.array([0.0, 0.0], np.float32))  # coast at 10 m/s for one 0.05 s tick
    assert info0["distance_m"] == pytest.approx(0.5, abs=1e-6)
    assert r0 == pytest.approx(0.5, abs=1e-6)
    assert info0["speed_mps"] == pytest.approx(10.0)
    _, r1, _, _, info1 = env.step(np.array([0.5, 0.0], np.float32))
    progress = info1["distance_m"] - info0["distance_m"]
    assert r1 == pytest.approx(progress - 1.0 * 0.5, abs=1e-6)  # lambda_s * |steer|
    env.close()


def test_action_repeat_counts_ticks_and_distance(fake_carla: FakeServer) -> None:
    env = make("carla-hw", fake_carla, action_repeat=4, carla={"num_vehicles": 0})
    env.reset()
    env.unwrapped.ego.speed = 8.0
    frame_before = fake_carla.frame
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["env_steps"] == 4 and fake_carla.frame - frame_before == 4
    assert info["distance_m"] == pytest.approx(8.0 * 0.05 * 4, abs=1e-6)
    env.close()


def test_collision_ends_episode_with_impulse_penalty(fake_carla: FakeServer) -> None:
    env = make("carla-hw", fake_carla, carla={"num_vehicles": 0})
    env.reset()
    ego = env.unwrapped.ego
    blocker = env.unwrapped.spawn(Blueprint("vehicle.audi.a2"),
                                  carla.Transform(carla.Location(x=ego.location.x + 6.0, y=ego.location.y, z=0.5)))
    assert blocker is not None
    ego.speed = 10.0
    terminated, reward, info = False, 0.0, {}
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0], np.float32))
        if terminated:
            break
    assert terminated and info["collision"]
    assert reward < -1.0  # 1e-4 * ~11000 N*s impulse outweighs one tick of progress
    env.close()


def test_gp_pedestrian_hidden_then_steps_into_ego_lane(fake_carla: FakeServer) -> None:
    env = make("carla-gp", fake_carla, carla={"num_vehicles": 0})
    env.reset()
    core = env.unwrapped
    ego, walker, van = core.ego, core.scenario.walker, core.scenario.occluder
    assert ego.location.y == pytest.approx((fake_carla.lanes - 1) * LANE_W), "#GP spawns in the rightmost lane"
    assert van is not None and van.location.y > ego.location.y + LANE_W / 2, "the van parks right of the ego lane"
    assert walker.location.y > van.location.y and walker.location.x > van.location.x, "pedestrian waits past the van"
    ego.speed = 8.0
    entered, hit, info = False, False, {}
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.0], np.float32))
        if abs(walker.location.y - ego.location.y) < LANE_W / 2 and walker.location.x > ego.location.x:
            entered = True
        if terminated or truncated:
            hit = info["collision"]
            break
    assert entered and info["hazard_active"], "the pedestrian walked into the ego lane ahead of the ego"
    assert hit, "an ego that holds its speed meets the pedestrian"
    env.close()


def test_connection_drop_truncates_then_reconnects(fake_carla: FakeServer) -> None:
    env = make("carla-hw", fake_carla)
    env.reset()
    spawned = {a.id for a in fake_carla.alive()}
    env.step(np.zeros(2, np.float32))
    fake_carla.up = False

    def back_after_first_try() -> None:
        fake_carla.up = True

    core = env.unwrapped
    core.conn._sleep = lambda s: back_after_first_try()
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated and info["connection_lost"] and info["reconnects"] == 1
    assert obs.shape == (9, 32, 32)
    assert not spawned & {a.id for a in fake_carla.alive()}, "the old episode's actors were destroyed after reconnect"
    obs, info = env.reset()
    assert not info["connection_lost"] and core.ego is not None
    env.step(np.zeros(2, np.float32))
    env.close()


def test_watchdog_gives_up_with_typed_error(fake_carla: FakeServer) -> None:
    from covr_ray.errors import SimulatorConnectionError

    env = make("carla-hw", fake_carla, carla={"reconnect_attempts": 2})
    env.reset()
    fake_carla.up = False
    with pytest.raises(SimulatorConnectionError, match="unreachable after 2 tries"):
        env.step(np.zeros(2, np.float32))


def test_watchdog_restarts_the_server_with_its_command(fake_carla: FakeServer, tmp_path: Path) -> None:
    flag = tmp_path / "server-started"
    command = f"{sys.executable} -c \"import pathlib, time; pathlib.Path('{flag}').touch(); time.sleep(60)\""
    env = make("carla-hw", fake_carla, carla={"server_command": command, "server_start_wait_s": 0.0,
                                          "reconnect_attempts": 40, "reconnect_backoff_s": 0.05})
    env.reset()
    fake_carla.up = False
    fake_carla.flag = flag  # the fake server answers again once the command has run
    _, _, _, truncated, info = env.step(np.zeros(2, np.float32))
    conn = env.unwrapped.conn
    assert truncated and info["reconnects"] == 1 and conn.server_restarts == 1 and flag.exists()
    proc = conn._server
    assert proc is not None and proc.poll() is None
    env.close()
    assert proc.poll() is not None, "close() stops the server process it started"


def test_close_destroys_every_actor_and_restores_async(fake_carla: FakeServer) -> None:
    env = make("carla-gp", fake_carla)
    env.reset()
    env.step(np.zeros(2, np.float32))
    assert len(fake_carla.alive()) > 3
    env.reset()  # a second scene replaces the first one
    n = len(fake_carla.alive())
    assert n == 1 + 2 + 5 + 2  # ego, 2 sensors, traffic, van + pedestrian
    env.close()
    assert fake_carla.alive() == [] and fake_carla.sync is False and fake_carla.tm_sync is False


def test_carla_params_are_checked(fake_carla: FakeServer) -> None:
    from covr_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="env.kwargs.camera"):
        make("carla-hw", fake_carla, camera="fisheye")
    with pytest.raises(ConfigError, match="env.carla.port"):
        make("carla-hw", fake_carla, carla={"port": 0})


def test_fake_covers_the_real_api() -> None:
    """Every carla name the env uses exists in the real client (the dev extra installs it)."""
    from covr_envs.carla_env import CARLA_API

    missing = []
    for dotted in CARLA_API:
        obj: Any = carla
        for part in dotted.split("."):
            if not hasattr(obj, part):
                missing.append(dotted)
                break
            obj = getattr(obj, part)
    assert not missing, f"not in carla {getattr(carla, '__version__', '?')}: {missing}"


def test_env_gets_the_real_value_types(fake_carla: FakeServer) -> None:
    """Only Client is fake: what the env builds (controls, transforms, settings, commands) is the real type."""
    env = make("carla-gp", fake_carla, carla={"num_vehicles": 0})
    env.reset()
    core = env.unwrapped
    assert core.carla.Client is not carla.Client and core.carla.VehicleControl is carla.VehicleControl
    assert isinstance(core.scenario.direction, carla.Vector3D)
    assert core.scenario.occluder.control.hand_brake is True and isinstance(core.scenario.occluder.control,
                                                                            carla.VehicleControl)
    env.step(np.array([0.25, 0.5], np.float32))
    control = core.ego.control
    assert isinstance(control, carla.VehicleControl)
    assert (control.steer, control.throttle, control.brake) == (0.25, 0.5, 0.0)  # exact in float32
    env.close()


@pytest.mark.requires_carla_server
def test_live_carla_server_hw() -> None:
    from covr_envs import make_env

    cfg = {"host": os.environ["CARLA_HOST"], "port": int(os.environ.get("CARLA_PORT", "2000")), "num_vehicles": 20}
    env = make_env("carla-hw", 0, carla=cfg)
    try:
        obs, info = env.reset()
        assert obs.shape == (9, 84, 84)
        start = time.perf_counter()
        for _ in range(40):
            obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.6], np.float32))
            if terminated or truncated:
                break
        assert info["distance_m"] > 0.0 and np.isfinite(reward)
        assert time.perf_counter() - start < 120
    finally:
        env.close()
