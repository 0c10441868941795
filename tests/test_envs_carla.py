"""CARLA envs against a fake CARLA server built on the real client's value types, plus one live test.

No CARLA server can run on the CPU machines. :func:`fake_carla_module` hands the env a ``carla`` module that
is the real client module (the ``carla`` wheel of the dev extra) with only ``Client`` replaced: every value
type the env builds or reads (``Location``, ``Rotation``, ``Transform``, ``Vector3D``, ``VehicleControl``,
``WalkerControl``, ``WorldSettings``, ``LaneType``, ``command.DestroyActor``) is the real one, so its
constructors, argument types and attribute names are checked. The server side stays a fake, since those
classes (``World``, ``Map``, ``Waypoint``, ``Actor``, ``ActorBlueprint``, ``BlueprintLibrary``,
``TrafficManager``, ``Image``, ``CollisionEvent``) cannot be instantiated without a server ("This class
cannot be instantiated from Python"). It simulates a straight multi-lane highway along +x, kinematic vehicles
and walkers, an RGB camera and a collision sensor, synchronous ticks, and a connection that can drop and come
back. :func:`test_fake_covers_the_real_api` checks that every name the env uses
(``covr_envs.carla_env.CARLA_API``) exists on the real client.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client wheel is not installed (pip install 'covr-ray[dev]')")

LANE_W = 3.5


# --- the fake server (everything that needs one); value types come from the real `carla` ------------------

class FakeServer:
    """The simulated server: one highway road of ``lanes`` lanes along +x, a one-lane ramp elsewhere."""

    def __init__(self, lanes: int = 4) -> None:
        self.lanes = lanes
        self.up = True
        self.flag: Optional[Path] = None  # when set and the file exists, a dropped server comes back
        self.map_name = "Carla/Maps/Town01"
        self.loaded: list[str] = []
        self.frame = 0
        self.actors: dict[int, "Actor"] = {}
        self.next_id = 1
        self.sync = False
        self.delta: Optional[float] = None
        self.tm_sync = False
        self.tm_seed: Optional[int] = None

    def check(self) -> None:
        if not self.up and self.flag is not None and self.flag.exists():
            self.up = True
        if not self.up:
            raise RuntimeError("time-out of 1000ms while waiting for the simulator, make sure the simulator is "
                               "ready and connected to 127.0.0.1:2000")

    def alive(self, role: Optional[str] = None) -> list["Actor"]:
        return [a for a in self.actors.values() if role is None or a.type_id.startswith(role)]

    def tick(self) -> int:
        dt = self.delta or 0.05
        self.frame += 1
        for a in list(self.actors.values()):
            a.advance(dt)
        ego = next((a for a in self.actors.values() if a.attributes.get("role_name") == "covr"
                    and a.type_id == "vehicle.tesla.model3"), None)
        for a in list(self.actors.values()):
            a.sense(self.frame, ego)
        return self.frame


class Blueprint:
    """Stand-in for carla.ActorBlueprint (only the server's BlueprintLibrary makes those)."""

    def __init__(self, bp_id: str) -> None:
        self.id = bp_id
        self.attributes: dict[str, str] = {}
        if bp_id.startswith(("vehicle.", "walker.")):
            self.attributes["role_name"] = ""
        if bp_id.startswith("walker."):
            self.attributes["is_invincible"] = "true"
        if bp_id == "sensor.camera.rgb":
            self.attributes.update(image_size_x="800", image_size_y="600", fov="90")

    def has_attribute(self, key: str) -> bool:
        return key in self.attributes

    def set_attribute(self, key: str, value: str) -> None:
        if not isinstance(value, str):  # the real one takes (str, str) only
            raise TypeError(f"set_attribute({key!r}, {value!r}): the value must be a str")
        if key not in self.attributes:
            raise IndexError(f"no attribute {key}")
        self.attributes[key] = value


BLUEPRINTS = ["vehicle.tesla.model3", "vehicle.audi.a2", "vehicle.carlamotors.carlacola", "vehicle.bmw.grandtourer",
              "walker.pedestrian.0001", "walker.pedestrian.0002", "sensor.camera.rgb", "sensor.other.collision"]


class BlueprintLibrary:
    def __init__(self, server: FakeServer) -> None:
        self._server = server

    def find(self, id: str) -> Blueprint:
        self._server.check()
        if id not in BLUEPRINTS:
            raise IndexError(f"blueprint {id!r} not found")
        return Blueprint(id)

    def filter(self, wildcard_pattern: str) -> list[Blueprint]:
        self._server.check()
        return [Blueprint(b) for b in BLUEPRINTS if fnmatch.fnmatch(b, wildcard_pattern)]


def forward(yaw: float) -> Any:
    return carla.Transform(rotation=carla.Rotation(yaw=yaw)).get_forward_vector()


class Actor:
    """Stand-in for carla.Actor / Vehicle / Walker / Sensor: a kinematic body the fake server moves."""

    def __init__(self, server: FakeServer, bp: Blueprint, transform: Any, parent: Optional["Actor"]) -> None:
        self.server, self.id, self.type_id = server, server.next_id, bp.id
        server.next_id += 1
        self.attributes = dict(bp.attributes)
        self.parent = parent
        self.location = carla.Location(transform.location)
        self.yaw = transform.rotation.yaw
        self.speed = 0.0
        self.direction = carla.Vector3D()
        self.control = carla.VehicleControl()
        self.autopilot = False
        self.callback: Optional[Callable[[Any], None]] = None
        self.touching: set[int] = set()

    def _c(self) -> None:
        self.server.check()
        if self.id not in self.server.actors:
            raise RuntimeError(f"actor {self.id} not found")

    def get_transform(self) -> Any:
        self._c()
        return carla.Transform(carla.Location(self.location), carla.Rotation(yaw=self.yaw))

    def get_velocity(self) -> Any:
        self._c()
        d = self.direction if self.type_id.startswith("walker.") else forward(self.yaw)
        return carla.Vector3D(x=d.x * self.speed, y=d.y * self.speed, z=0.0)

    def apply_control(self, control: Any) -> None:
        self._c()
        walker = self.type_id.startswith("walker.")
        if not isinstance(control, carla.WalkerControl if walker else carla.VehicleControl):
            raise TypeError(f"{self.type_id}.apply_control({control!r}): wrong control type")  # as Boost would
        if walker:
            self.direction, self.speed = control.direction, control.speed
        else:
            self.control = control

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self._c()
        self.autopilot = enabled
        self.speed = 20.0 if enabled else self.speed

    def listen(self, callback: Callable[[Any], None]) -> None:
        self._c()
        self.callback = callback

    def stop(self) -> None:
        self.callback = None

    def destroy(self) -> bool:
        self._c()
        return self.server.actors.pop(self.id, None) is not None

    def advance(self, dt: float) -> None:
        if self.parent is not None:
            self.location = self.parent.location
            return
        if self.type_id.startswith("vehicle.") and not self.autopilot:
            c = self.control
            accel = 0.0 if c.hand_brake else 4.0 * c.throttle - 8.0 * c.brake
            self.speed = max(0.0, self.speed + accel * dt)
            self.yaw += 40.0 * c.steer * dt * min(self.speed / 10.0, 1.0)
        d = self.direction if self.type_id.startswith("walker.") else forward(self.yaw)
        self.location = carla.Location(x=self.location.x + d.x * self.speed * dt,
                                       y=self.location.y + d.y * self.speed * dt, z=self.location.z)

    def sense(self, frame: int, ego: Optional["Actor"]) -> None:
        # carla.Image and carla.CollisionEvent come from the server only: the events are stand-ins
        if self.callback is None or self.parent is None:
            return
        if self.type_id == "sensor.camera.rgb":
            w, h = int(self.attributes["image_size_x"]), int(self.attributes["image_size_y"])
            bgra = np.zeros((h, w, 4), np.uint8)
            bgra[..., 0], bgra[..., 1], bgra[..., 3] = 10, 20, 255
            bgra[..., 2] = int(self.parent.location.x * 10) % 256  # the image changes as the ego moves
            self.callback(types.SimpleNamespace(frame=frame, width=w, height=h, raw_data=bgra.tobytes()))
        elif self.type_id == "sensor.other.collision" and ego is self.parent:
            for other in list(self.server.actors.values()):
                if other is ego or other.parent is not None or other.type_id.startswith("sensor."):
                    continue
                reach = 1.2 if other.type_id.startswith("walker.") else 2.5
                near = ego.location.distance(other.location) < reach
                if near and other.id not in self.touching:
                    impulse = 1000.0 * (ego.speed + 1.0)
                    self.callback(types.SimpleNamespace(other_actor=other, frame=frame,
                                                        normal_impulse=carla.Vector3D(x=impulse)))
                    ego.speed = 0.0
                self.touching = {o for o in self.touching if o in self.server.actors} | ({other.id} if near else set())


class Waypoint:
    """Stand-in for carla.Waypoint (only a carla.Map makes those)."""

    def __init__(self, server: FakeServer, road: int, lane: int, x: float) -> None:
        self.server, self.road_id, self._lane, self.x = server, road, lane, x
        self.lane_width = LANE_W
        self.is_junction = False
        if road == 1:
            self.lane_type = carla.LaneType.Driving if 0 <= lane < server.lanes else carla.LaneType.Shoulder
            self.lane_id = -(lane + 1) if lane >= 0 else 1  # lane -1 is the opposite direction
            y = lane * LANE_W
        else:
            self.lane_type, self.lane_id, y = carla.LaneType.Driving, -1, -200.0
        self.transform = carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=0.0))

    def next(self, distance: float) -> list["Waypoint"]:
        return [Waypoint(self.server, self.road_id, self._lane, self.x + distance)]

    def get_left_lane(self) -> Optional["Waypoint"]:
        if self.road_id != 1 or self._lane < 0:
            return None
        return Waypoint(self.server, 1, self._lane - 1, self.x)

    def get_right_lane(self) -> Optional["Waypoint"]:
        if self.road_id != 1 or self._lane >= self.server.lanes:
            return None
        return Waypoint(self.server, 1, self._lane + 1, self.x)


class Map:
    """Stand-in for the server's carla.Map of the loaded town."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.name = server.map_name

    def get_spawn_points(self) -> list[Any]:
        self.server.check()
        points = [(x, lane * LANE_W) for lane in range(self.server.lanes) for x in (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)]
        points += [(0.0, -200.0), (50.0, -200.0)]  # the one-lane ramp
        return [carla.Transform(carla.Location(x=x, y=y, z=0.5)) for x, y in points]

    def get_waypoint(self, location: Any, project_to_road: bool = True,
                     lane_type: Any = carla.LaneType.Driving) -> Optional[Waypoint]:
        self.server.check()
        if not isinstance(location, carla.Location) or not isinstance(lane_type, carla.LaneType):
            raise TypeError(f"get_waypoint({location!r}, lane_type={lane_type!r}): wrong argument types")
        if location.y < -100:
            return Waypoint(self.server, 2, 0, location.x)
        lane = int(round(location.y / LANE_W))
        if not project_to_road and (lane < 0 or lane >= self.server.lanes or abs(location.y - lane * LANE_W) > LANE_W / 2):
            return None
        return Waypoint(self.server, 1, min(max(lane, 0), self.server.lanes - 1), location.x)


class World:
    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def get_map(self) -> Map:
        self.server.check()
        return Map(self.server)

    def get_settings(self) -> Any:
        self.server.check()
        settings = carla.WorldSettings()
        settings.synchronous_mode, settings.fixed_delta_seconds = self.server.sync, self.server.delta
        return settings

    def apply_settings(self, settings: Any) -> int:
        self.server.check()
        if not isinstance(settings, carla.WorldSettings):
            raise TypeError(f"apply_settings({settings!r}): not a carla.WorldSettings")
        self.server.sync, self.server.delta = settings.synchronous_mode, settings.fixed_delta_seconds
        return self.server.frame

    def tick(self, seconds: float = 0.0) -> int:
        self.server.check()
        return self.server.tick()

    def get_blueprint_library(self) -> BlueprintLibrary:
        self.server.check()
        return BlueprintLibrary(self.server)

    def try_spawn_actor(self, blueprint: Blueprint, transform: Any, attach_to: Optional[Actor] = None) -> Optional[Actor]:
        self.server.check()
        if not isinstance(transform, carla.Transform):
            raise TypeError(f"spawn at {transform!r}: not a carla.Transform")
        if attach_to is None and any(a.parent is None and a.location.distance(transform.location) < 2.0
                                     for a in self.server.actors.values()):
            return None
        actor = Actor(self.server, blueprint, transform, attach_to)
        self.server.actors[actor.id] = actor
        return actor

    def spawn_actor(self, blueprint: Blueprint, transform: Any, attach_to: Optional[Actor] = None) -> Actor:
        actor = self.try_spawn_actor(blueprint, transform, attach_to)
        if actor is None:
            raise RuntimeError("Spawn failed because of collision at spawn position")
        return actor


class TrafficManager:
    def __init__(self, server: FakeServer, port: int) -> None:
        self.server, self.port = server, port

    def set_synchronous_mode(self, mode: bool) -> None:
        self.server.check()
        self.server.tm_sync = mode

    def set_random_device_seed(self, value: int) -> None:
        self.server.check()
        self.server.tm_seed = value

    def get_port(self) -> int:
        return self.port


def fake_carla_module(server: FakeServer) -> types.ModuleType:
    """The real ``carla`` module with a fake ``Client`` that talks to ``server``."""
    mod = types.ModuleType("carla")
    mod.__dict__.update({k: v for k, v in vars(carla).items() if not k.startswith("__")})

    class Client:
        def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
            self.host, self.port = host, port

        def set_timeout(self, seconds: float) -> None:
            self.timeout = seconds

        def get_world(self) -> World:
            server.check()
            return World(server)

        def load_world(self, map_name: str, reset_settings: bool = True) -> World:
            server.check()
            server.map_name = f"Carla/Maps/{map_name}"
            server.loaded.append(map_name)
            if reset_settings:
                server.sync, server.delta = False, None
            return World(server)

        def get_trafficmanager(self, port: int = 8000) -> TrafficManager:
            server.check()
            return TrafficManager(server, port)

        def apply_batch_sync(self, commands: list[Any], do_tick: bool = False) -> list[Any]:
            server.check()
            for cmd in commands:
                if not isinstance(cmd, carla.command.DestroyActor):
                    raise TypeError(f"apply_batch_sync: {cmd!r} is not a carla.command")
                server.actors.pop(cmd.actor_id, None)
            return []

    mod.Client = Client
    return mod


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    srv = FakeServer()
    monkeypatch.setitem(sys.modules, "carla", fake_carla_module(srv))
    return srv


def carla_cfg(**over: Any) -> dict[str, Any]:
    cfg = {"host": "127.0.0.1", "port": 2000, "timeout_s": 2.0, "num_vehicles": 5, "reconnect_attempts": 3,
           "reconnect_backoff_s": 0.0, "server_start_wait_s": 0.0}
    cfg.update(over)
    return cfg


def make(name: str, server: FakeServer, seed: int = 0, **kw: Any) -> Any:
    from covr_envs import make_env

    return make_env(name, seed, image_size=32, carla=carla_cfg(**kw.pop("carla", {})), **kw)


# --- tests -------------------------------------------------------------------------------------------------

def test_missing_carla_raises_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from covr_envs import make_env
    from covr_ray.errors import DependencyMissingError

    monkeypatch.setitem(sys.modules, "carla", None)  # import carla -> ImportError
    with pytest.raises(DependencyMissingError, match=r"covr-ray\[carla\]"):
        make_env("carla-hw", 0)


def test_hw_scene_sync_mode_highway_spawn_and_traffic(server: FakeServer) -> None:
    env = make("carla-hw", server)
    obs, info = env.reset()
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8
    assert server.sync is True and server.delta == pytest.approx(0.05) and server.tm_sync is True
    assert server.loaded == ["Town04"]
    ego = env.unwrapped.ego
    assert ego.location.y > -100, "#HW must not spawn on the one-lane ramp"
    vehicles = [a for a in server.alive("vehicle.") if a is not ego]
    assert len(vehicles) == 5 and all(v.autopilot for v in vehicles)
    assert {a.type_id for a in server.alive("sensor.")} == {"sensor.camera.rgb", "sensor.other.collision"}
    frame = env.render()  # BGRA (10, 20, x) -> RGB (x, 20, 10)
    assert frame.shape == (32, 32, 3) and tuple(frame[0, 0, 1:]) == (20, 10)
    assert set(info) >= {"env_steps", "distance_m", "speed_mps", "collision", "offroad", "connection_lost"}
    env.close()


def test_reward_is_progress_minus_steer_and_distance_in_metres(server: FakeServer) -> None:
    env = make("carla-hw", server, carla={"num_vehicles": 0})
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


def test_action_repeat_counts_ticks_and_distance(server: FakeServer) -> None:
    env = make("carla-hw", server, action_repeat=4, carla={"num_vehicles": 0})
    env.reset()
    env.unwrapped.ego.speed = 8.0
    frame_before = server.frame
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["env_steps"] == 4 and server.frame - frame_before == 4
    assert info["distance_m"] == pytest.approx(8.0 * 0.05 * 4, abs=1e-6)
    env.close()


def test_collision_ends_episode_with_impulse_penalty(server: FakeServer) -> None:
    env = make("carla-hw", server, carla={"num_vehicles": 0})
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


def test_gp_pedestrian_hidden_then_steps_into_ego_lane(server: FakeServer) -> None:
    env = make("carla-gp", server, carla={"num_vehicles": 0})
    env.reset()
    core = env.unwrapped
    ego, walker, van = core.ego, core.scenario.walker, core.scenario.occluder
    assert ego.location.y == pytest.approx((server.lanes - 1) * LANE_W), "#GP spawns in the rightmost lane"
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


def test_connection_drop_truncates_then_reconnects(server: FakeServer) -> None:
    env = make("carla-hw", server)
    env.reset()
    spawned = {a.id for a in server.alive()}
    env.step(np.zeros(2, np.float32))
    server.up = False

    def back_after_first_try() -> None:
        server.up = True

    core = env.unwrapped
    core.conn._sleep = lambda s: back_after_first_try()
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert truncated and not terminated and info["connection_lost"] and info["reconnects"] == 1
    assert obs.shape == (9, 32, 32)
    assert not spawned & {a.id for a in server.alive()}, "the old episode's actors were destroyed after reconnect"
    obs, info = env.reset()
    assert not info["connection_lost"] and core.ego is not None
    env.step(np.zeros(2, np.float32))
    env.close()


def test_watchdog_gives_up_with_typed_error(server: FakeServer) -> None:
    from covr_ray.errors import SimulatorConnectionError

    env = make("carla-hw", server, carla={"reconnect_attempts": 2})
    env.reset()
    server.up = False
    with pytest.raises(SimulatorConnectionError, match="unreachable after 2 tries"):
        env.step(np.zeros(2, np.float32))


def test_watchdog_restarts_the_server_with_its_command(server: FakeServer, tmp_path: Path) -> None:
    flag = tmp_path / "server-started"
    command = f"{sys.executable} -c \"import pathlib, time; pathlib.Path('{flag}').touch(); time.sleep(60)\""
    env = make("carla-hw", server, carla={"server_command": command, "server_start_wait_s": 0.0,
                                          "reconnect_attempts": 40, "reconnect_backoff_s": 0.05})
    env.reset()
    server.up = False
    server.flag = flag  # the fake server answers again once the command has run
    _, _, _, truncated, info = env.step(np.zeros(2, np.float32))
    conn = env.unwrapped.conn
    assert truncated and info["reconnects"] == 1 and conn.server_restarts == 1 and flag.exists()
    proc = conn._server
    assert proc is not None and proc.poll() is None
    env.close()
    assert proc.poll() is not None, "close() stops the server process it started"


def test_close_destroys_every_actor_and_restores_async(server: FakeServer) -> None:
    env = make("carla-gp", server)
    env.reset()
    env.step(np.zeros(2, np.float32))
    assert len(server.alive()) > 3
    env.reset()  # a second scene replaces the first one
    n = len(server.alive())
    assert n == 1 + 2 + 5 + 2  # ego, 2 sensors, traffic, van + pedestrian
    env.close()
    assert server.alive() == [] and server.sync is False and server.tm_sync is False


def test_carla_params_are_checked(server: FakeServer) -> None:
    from covr_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="env.kwargs.camera"):
        make("carla-hw", server, camera="fisheye")
    with pytest.raises(ConfigError, match="env.carla.port"):
        make("carla-hw", server, carla={"port": 0})


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


def test_env_gets_the_real_value_types(server: FakeServer) -> None:
    """Only Client is fake: what the env builds (controls, transforms, settings, commands) is the real type."""
    env = make("carla-gp", server, carla={"num_vehicles": 0})
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
