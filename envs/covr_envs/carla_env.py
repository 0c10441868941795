"""CARLA envs ``carla-hw`` and ``carla-gp``: a Gymnasium env over a CARLA 0.9.x server.

Synchronous mode with ``env.carla.fixed_delta_s`` (20 Hz by default); the agent's action is applied for
``action_repeat`` ticks; the observation is the RGB camera's image of the last tick, ``(S, S, 3)`` from a
camera attached to the ego. Scenarios, reward and distance: :mod:`covr_envs.carla_scenarios`.

Action ``[steer, throttle_brake]`` in [-1, 1] becomes ``carla.VehicleControl(steer=steer,
throttle=max(tb, 0), brake=max(-tb, 0))``. ``info``: ``distance_m``, ``speed_mps``, ``collision``,
``offroad`` (the ego is not on a driving lane; informational, the episode goes on), ``env_steps`` (ticks),
``connection_lost`` and ``reconnects``; #GP adds ``hazard_active``.

When the server stops answering (any RPC fails, or no camera image arrives within ``timeout_s``), the
watchdog (:class:`~covr_envs.carla_connection.CarlaConnection`) reconnects, restarting the server if
``env.carla.server_command`` is set, and the step returns the last frame with ``truncated=True`` and
``connection_lost=True``; the next ``reset`` builds a fresh scene. Every actor the env spawns is destroyed
on reset and on ``close`` (sensors are stopped first).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional, SupportsFloat

import gymnasium as gym
import numpy as np

from covr_envs.carla_connection import CarlaConnection, ConnectionLost, import_carla
from covr_envs.carla_scenarios import (SCENARIOS, CarlaParams, image_to_rgb, lane_progress, tick_reward,
                                       vector_norm)
from covr_envs.driving import DRIVING_ACTIONS, build_params
from covr_envs.registry import DRIVING_INFO_KEYS, EnvSpec, register_env
from covr_envs.wrappers import check_action, frame_space, resize_frame, unit_action_space
from covr_ray.errors import ConfigError, EnvError, SimulatorConnectionError
from covr_ray.log import get_logger

log = get_logger(__name__)

CARLA_INFO_KEYS = DRIVING_INFO_KEYS + ("connection_lost", "reconnects")

#: every ``carla`` attribute this module and the scenarios use (checked against the real client in tests).
CARLA_API = (
    "Client", "Client.set_timeout", "Client.get_world", "Client.load_world", "Client.get_trafficmanager",
    "Client.apply_batch_sync", "World.get_map", "World.get_settings", "World.apply_settings", "World.tick",
    "World.get_blueprint_library", "World.try_spawn_actor", "World.spawn_actor", "Map.get_spawn_points",
    "Map.get_waypoint", "Map.name", "Location.distance", "Actor.id", "Waypoint.next", "Waypoint.get_left_lane", "Waypoint.get_right_lane", "Waypoint.lane_id",
    "Waypoint.lane_type", "Waypoint.lane_width", "Waypoint.is_junction", "Waypoint.transform",
    "Transform.get_forward_vector", "Transform.get_right_vector", "Actor.get_transform", "Actor.get_velocity",
    "Actor.destroy", "Vehicle.apply_control", "Vehicle.set_autopilot", "Walker.apply_control", "Sensor.listen",
    "Sensor.stop", "TrafficManager.set_synchronous_mode", "TrafficManager.set_random_device_seed",
    "TrafficManager.get_port", "BlueprintLibrary.find", "BlueprintLibrary.filter", "ActorBlueprint.set_attribute",
    "ActorBlueprint.has_attribute", "WorldSettings.synchronous_mode", "WorldSettings.fixed_delta_seconds",
    "CollisionEvent.normal_impulse", "Image.raw_data", "Image.frame", "LaneType.Driving", "Location", "Rotation",
    "Transform", "Vector3D", "VehicleControl", "WalkerControl", "command.DestroyActor",
)

_CAMERAS = {"chase": ((-5.5, 0.0, 2.8), -15.0), "front": ((1.5, 0.0, 2.4), -5.0)}


class CarlaEnv(gym.Env):
    """One CARLA scenario (``hw`` or ``gp``). obs: (S, S, 3) uint8; action: float32 (2,) [steer, tb]."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, name: str, scenario: str, seed: int, image_size: int = 84, action_repeat: int = 1,
                 carla: Any = None, sleep: Optional[Callable[[float], None]] = None, **kwargs: Any) -> None:
        from covr_ray.config import CarlaSection
        from covr_ray.typed_data import build_dataclass

        if scenario not in SCENARIOS:
            raise EnvError(f"unknown CARLA scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        if carla is None:
            carla = CarlaSection()
        elif isinstance(carla, dict):
            carla = build_dataclass(CarlaSection, carla, "env.carla")
        if not isinstance(carla, CarlaSection):
            raise ConfigError("env.carla", carla, "a CarlaSection or a mapping of its fields")
        carla.validate("env.carla")
        self.cfg = carla
        self.carla = import_carla()
        self.name = name
        self.scenario_name = scenario
        self.params: CarlaParams = build_params(CarlaParams, {}, kwargs)
        self.image_size = int(image_size)
        self.action_repeat = int(action_repeat)
        self.action_space = unit_action_space(2)
        self.observation_space = frame_space(self.image_size)
        self.render_mode = "rgb_array"
        self.rng = np.random.default_rng(int(seed))
        self._seed = int(seed)
        extra = {"sleep": sleep} if sleep is not None else {}
        self.conn = CarlaConnection(self.carla, carla.host, carla.port, carla.tm_port, carla.timeout_s, carla.town,
                                    reconnect_attempts=carla.reconnect_attempts, backoff_s=carla.reconnect_backoff_s,
                                    server_command=carla.server_command,
                                    server_start_wait_s=carla.server_start_wait_s, **extra)
        self.ego: Any = None
        self.scenario: Any = None
        self._actors: list[Any] = []
        self._sensors: list[Any] = []
        self._images: "queue.Queue[Any]" = queue.Queue()
        self._impulses: list[float] = []
        self._lock = threading.Lock()
        self._library: Any = None
        self._speed = 0.0
        self._frame: Optional[np.ndarray] = None
        self._distance = 0.0
        self._collided = False
        self._offroad = False

    # --- helpers the scenarios use ----------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One RPC through the watchdog (a failure raises ConnectionLost)."""
        return self.conn.call(fn, *args, **kwargs)

    def blueprint(self, pattern: str) -> Any:
        """A blueprint by exact id, or a seeded random choice among those matching a wildcard pattern."""
        library = self._library
        if "*" in pattern:
            matches = list(self.call(library.filter, pattern))
            if not matches:
                raise EnvError(f"CARLA has no blueprint matching {pattern!r}")
            bp = matches[int(self.rng.integers(len(matches)))]
        else:
            try:
                bp = self.call(library.find, pattern)
            except IndexError as exc:  # BlueprintLibrary.find raises IndexError for an unknown id
                raise ConfigError("env.kwargs", pattern, "a blueprint id the server knows") from exc
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", "covr")
        if bp.has_attribute("is_invincible"):  # walkers: let collisions count
            bp.set_attribute("is_invincible", "false")
        return bp

    def spawn(self, blueprint: Any, transform: Any, attach_to: Any = None) -> Any:
        """Spawn and track an actor (destroyed on reset/close); None when the spot is occupied."""
        world = self.conn.world
        if attach_to is not None:
            actor = self.call(world.spawn_actor, blueprint, transform, attach_to=attach_to)
        else:
            actor = self.call(world.try_spawn_actor, blueprint, transform)
        if actor is not None:
            self._actors.append(actor)
        return actor

    # --- scene ------------------------------------------------------------------------------------------
    def _apply_sync(self, enabled: bool) -> None:
        world = self.conn.world
        settings = self.call(world.get_settings)
        settings.synchronous_mode = enabled
        settings.fixed_delta_seconds = self.cfg.fixed_delta_s if enabled else None
        self.call(world.apply_settings, settings)
        self.call(self.conn.tm.set_synchronous_mode, enabled)

    def _spawn_traffic(self) -> None:
        n = self.params.traffic_vehicles if self.params.traffic_vehicles >= 0 else self.cfg.num_vehicles
        points = list(self.call(self.conn.map.get_spawn_points))
        ego_loc = self.call(self.ego.get_transform).location
        points = [p for p in points if p.location.distance(ego_loc) > 15.0]
        port = self.call(self.conn.tm.get_port)
        for i in self.rng.permutation(len(points))[:n]:
            car = self.spawn(self.blueprint("vehicle.*"), points[int(i)])
            if car is not None:
                self.call(car.set_autopilot, True, port)

    def _attach_sensors(self) -> None:
        carla, s = self.carla, self.image_size
        (x, y, z), pitch = _CAMERAS[self.params.camera]
        cam_bp = self.blueprint("sensor.camera.rgb")
        for key, value in (("image_size_x", s), ("image_size_y", s), ("fov", self.params.fov)):
            cam_bp.set_attribute(key, str(value))
        cam_tf = carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(pitch=pitch))
        camera = self.spawn(cam_bp, cam_tf, attach_to=self.ego)
        images = self._images = queue.Queue()
        self.call(camera.listen, images.put)
        collision = self.spawn(self.blueprint("sensor.other.collision"), carla.Transform(), attach_to=self.ego)
        self.call(collision.listen, self._on_collision)
        self._sensors = [camera, collision]

    def _on_collision(self, event: Any) -> None:  # runs on the client's sensor thread
        with self._lock:
            self._impulses.append(vector_norm(event.normal_impulse))

    def _destroy_actors(self) -> None:
        """Stop the sensors and destroy every actor this env spawned (best effort when the server is gone)."""
        actors, sensors = self._actors, self._sensors
        self._actors, self._sensors, self.ego = [], [], None
        for sensor in sensors:
            try:
                sensor.stop()  # client-side: stops the stream; a stale handle may refuse
            except RuntimeError as exc:
                log.debug("CARLA: sensor %s did not stop cleanly: %s", getattr(sensor, "id", "?"), exc)
        if not actors or not self.conn.connected:
            if actors:
                log.warning("CARLA: %d actors left on an unreachable server", len(actors))
            return
        try:
            commands = [self.carla.command.DestroyActor(a.id) for a in reversed(actors)]
            self.call(self.conn.client.apply_batch_sync, commands, True)
        except ConnectionLost as exc:
            log.warning("CARLA: could not destroy %d actors, the server is gone (%s)", len(actors), exc)

    def _build_scene(self) -> None:
        self._destroy_actors()
        self._library = self.call(self.conn.world.get_blueprint_library)
        self._apply_sync(True)
        self.call(self.conn.tm.set_random_device_seed, int(self.rng.integers(2**31)))
        self.scenario = SCENARIOS[self.scenario_name]()
        self.ego = self.scenario.spawn_ego(self)
        self._attach_sensors()
        self._spawn_traffic()
        self.scenario.populate(self)
        with self._lock:
            self._impulses.clear()
        frame_id = self.call(self.conn.world.tick)
        self._frame = self._image_for(frame_id)

    def _image_for(self, frame_id: int) -> np.ndarray:
        """The camera image of tick ``frame_id`` (older images are dropped); ConnectionLost on timeout."""
        while True:
            try:
                image = self._images.get(timeout=self.cfg.timeout_s)
            except queue.Empty as exc:
                self.conn.mark_lost()
                raise ConnectionLost(f"no camera image within {self.cfg.timeout_s} s") from exc
            if image.frame >= frame_id:
                return resize_frame(image_to_rgb(image), self.image_size)

    # --- gym API ----------------------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.rng = np.random.default_rng(int(seed))
        self._distance, self._collided, self._offroad = 0.0, False, False
        for _ in range(2):
            self.conn.ensure()  # raises SimulatorConnectionError when the watchdog gives up
            try:
                self._build_scene()
                return self._frame.copy(), self._info(0, lost=False)
            except ConnectionLost as exc:
                log.warning("CARLA: connection lost while building the scene (%s); recovering", exc)
                self.conn.recover()  # the next _build_scene destroys what this one spawned
        raise SimulatorConnectionError(f"CARLA {self.cfg.host}:{self.cfg.port}: the scene could not be built twice")

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.ego is None or self._frame is None:
            raise EnvError(f"{self.name}: step() before reset() (or after a lost connection: call reset())")
        steer, tb = (float(v) for v in check_action(action, 2, self.name))
        control = self.carla.VehicleControl(throttle=max(tb, 0.0), steer=steer, brake=max(-tb, 0.0))
        reward, taken = 0.0, 0
        try:
            frame_id = 0
            for _ in range(self.action_repeat):
                self.call(self.ego.apply_control, control)
                frame_id = self.call(self.conn.world.tick)
                self.scenario.on_tick(self)
                reward += self._account_tick(steer)
                taken += 1
                if self._collided and self.params.terminate_on_collision:
                    break
            self._frame = self._image_for(frame_id)
        except ConnectionLost as exc:
            log.warning("CARLA: connection lost mid-episode (%s); truncating the episode and reconnecting", exc)
            self.conn.recover()  # raises SimulatorConnectionError when it gives up
            self._destroy_actors()  # the old actors survive if the server did: destroy them by id
            return self._frame.copy(), reward, False, True, self._info(taken, lost=True)
        terminated = self._collided and self.params.terminate_on_collision
        return self._frame.copy(), reward, terminated, False, self._info(taken, lost=False)

    def _account_tick(self, steer: float) -> float:
        cmap = self.conn.map
        velocity = self.call(self.ego.get_velocity)
        location = self.call(self.ego.get_transform).location
        lane = self.call(cmap.get_waypoint, location)  # projected onto the nearest driving lane
        on_lane = self.call(cmap.get_waypoint, location, project_to_road=False,
                            lane_type=self.carla.LaneType.Driving)
        self._offroad = on_lane is None
        progress = 0.0 if lane is None else lane_progress(velocity, lane.transform.get_forward_vector(),
                                                            self.cfg.fixed_delta_s)
        self._speed = vector_norm(velocity)
        with self._lock:
            impulse = float(sum(self._impulses))
            hit = bool(self._impulses)
            self._impulses.clear()
        self._collided = self._collided or hit
        self._distance += progress
        return tick_reward(progress, impulse, steer, self.params)

    def _info(self, env_steps: int, lost: bool) -> dict[str, Any]:
        info = {
            "env_steps": env_steps,
            "distance_m": float(self._distance),
            "speed_mps": float(self._speed),
            "collision": bool(self._collided),
            "offroad": bool(self._offroad),
            "connection_lost": bool(lost),
            "reconnects": int(self.conn.reconnects),
        }
        if self.scenario_name == "gp":
            info["hazard_active"] = bool(self.scenario is not None and self.scenario.info().get("hazard_active"))
        return info

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise EnvError(f"{self.name}: render() before reset()")
        return self._frame.copy()

    def close(self) -> None:
        """Destroy every spawned actor, give the server back its asynchronous mode, stop a server we started."""
        if self.conn.connected:
            self._destroy_actors()
            try:
                self._apply_sync(False)
            except ConnectionLost as exc:
                log.warning("CARLA: could not restore asynchronous mode (%s)", exc)
        self.conn.stop_server()


def make_carla(spec: EnvSpec, seed: int, image_size: int, action_repeat: int, scenario: str,
               carla: Any = None, **kwargs: Any) -> CarlaEnv:
    """Factory of ``carla-hw`` / ``carla-gp`` (kwargs: the fields of CarlaParams; ``carla``: CarlaSection)."""
    return CarlaEnv(spec.name, scenario, seed, image_size=image_size, action_repeat=action_repeat, carla=carla,
                    **kwargs)


HW_PROMPT = ("Camera view from behind your car on a multi-lane highway with traffic. Drive forward along the "
             "highway as far as possible: keep a good speed, overtake slower cars by changing lanes, never "
             "collide, and steer smoothly.")
GP_PROMPT = ("Camera view from behind your car on a road with a vehicle parked at the right roadside. A "
             "pedestrian may suddenly step out from behind the parked vehicle into your lane. Drive forward as "
             "far as possible, slow down near parked vehicles, and never hit the pedestrian or anything else.")

for _scenario, _prompt, _extra in (("hw", HW_PROMPT, ()), ("gp", GP_PROMPT, ("hazard_active",))):
    register_env(EnvSpec(
        name=f"carla-{_scenario}", family="carla", prompt=_prompt, action_description=DRIVING_ACTIONS,
        codec="driving", action_dim=2, default_action_repeat=1, factory="covr_envs.carla_env:make_carla",
        default_max_episode_steps=1000, info_keys=CARLA_INFO_KEYS + _extra, kwargs={"scenario": _scenario},
    ))

