"""A fake CARLA server behind the real ``carla`` client module, for the CARLA env tests.

No CARLA server can run on the CPU machines. :func:`fake_carla_module` hands the env a ``carla`` module that
is the real client module (the ``carla`` wheel of the dev extra) with only ``Client`` replaced: every value
type the env builds or reads (``Location``, ``Rotation``, ``Transform``, ``Vector3D``, ``VehicleControl``,
``WalkerControl``, ``WorldSettings``, ``LaneType``, ``command.DestroyActor``) is the real one, so its
constructors, argument types and attribute names are checked. The server side stays a fake, since those
classes (``World``, ``Map``, ``Waypoint``, ``Actor``, ``ActorBlueprint``, ``BlueprintLibrary``,
``TrafficManager``, ``Image``, ``CollisionEvent``) cannot be instantiated without a server ("This class
cannot be instantiated from Python"). :class:`FakeServer` simulates a straight multi-lane highway along +x,
kinematic vehicles and walkers, an RGB camera and a collision sensor, synchronous ticks, and a connection
that can drop and come back.

Needs the real ``carla`` wheel: import this module only after ``pytest.importorskip("carla")`` (the
``fake_carla`` fixture of conftest.py does, and installs the fake module for one test).
"""

from __future__ import annotations

import fnmatch
import types
from pathlib import Path
from typing import Any, Callable, Optional

import carla
import numpy as np

LANE_W = 3.5


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
