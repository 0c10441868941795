"""Embedded driving simulator (highway-env, no server): the #HW-style highway scenario and the shared base.

Both embedded scenarios (``driving-hw`` here, ``driving-gp`` in :mod:`covr_envs.driving_hazard`) use
highway-env's road network, kinematic bicycle vehicles and IDM/MOBIL traffic, stepped by our own loop, and
draw a top-down RGB view with highway-env's graphics (pygame, headless: ``SDL_VIDEODRIVER=dummy``).

Action ``[steer, throttle_brake]`` in [-1, 1]: ``steer`` < 0 turns left (up in the image), scaled to
``steer_max_rad``; ``throttle_brake`` > 0 accelerates up to ``max_accel`` m/s^2, < 0 brakes up to
``max_brake`` m/s^2, 0 holds the speed. The ego never reverses (speed is kept in [0, ``max_speed``]).

Reward (per agent step, in metres, modelled on the CARLA #HW reward of the literature,
``v . u_lane * dt - lambda_i * impulse - lambda_s * |steer|``)::

    r = progress_m - T * (steer_penalty * |steer| + brake_penalty * brake) - collision_penalty * [crash or off-road]

``progress_m`` is the ego's displacement along the road during the step, ``T`` the step's duration in
seconds. ``info``: ``distance_m`` (sum of progress this episode, metres), ``speed_mps``, ``collision``
(hit a vehicle, parked car or pedestrian), ``offroad`` (the ego's centre left the paved road), both of
which end the episode (``terminated``), and ``env_steps``.

#HW (``driving-hw``): a straight highway of ``lanes`` lanes with ``vehicles`` IDM/MOBIL cars (lane changes,
randomised driving styles) kept around the ego: a car that falls more than ``traffic_behind_m`` behind is
respawned ahead out of view, a car that gets more than ``traffic_ahead_m`` ahead is respawned behind, so the
density the ego meets stays constant over a long episode. The ego starts at ``ego_speed`` in a random lane.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np

from covr_envs.registry import DRIVING_INFO_KEYS, EnvSpec, register_env
from covr_envs.wrappers import check_action, frame_space, resize_frame, unit_action_space
from covr_ray.errors import ConfigError, EnvError

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

DRIVING_ACTIONS = ("2 values in [-1, 1]: steer, then throttle_brake. steer < 0 turns left (toward the top of the "
                   "image), > 0 turns right, 0 keeps straight; throttle_brake > 0 accelerates, < 0 brakes, "
                   "0 holds the current speed.")

EGO_COLOR = (50, 200, 0)
TRAFFIC_COLOR = (100, 200, 255)
GRASS_COLOR = (70, 120, 50)


@dataclass
class DrivingParams:
    """Simulator arguments of the embedded driving scenarios (``env.kwargs`` in a config)."""

    lanes: int = 4
    """Driving lanes (each 4 m wide)."""
    vehicles: int = 20
    """Traffic vehicles kept around the ego."""
    ego_speed: float = 20.0
    """Ego speed at reset, m/s."""
    max_speed: float = 35.0
    """Ego speed cap, m/s."""
    traffic_speed: tuple[float, float] = (18.0, 26.0)
    """Range of the traffic's initial and desired speeds, m/s."""
    traffic_ahead_m: float = 300.0
    """Traffic further ahead than this is respawned behind the ego."""
    traffic_behind_m: float = 80.0
    """Traffic further behind than this is respawned ahead of the ego."""
    sim_hz: float = 10.0
    """Physics integration rate, Hz."""
    policy_hz: float = 5.0
    """Agent decisions per simulated second (before action repeat); sim_hz must be a multiple."""
    steer_max_rad: float = 0.2
    """Front-wheel angle at |steer| = 1, radians."""
    max_accel: float = 3.0
    """Acceleration at throttle_brake = 1, m/s^2."""
    max_brake: float = 8.0
    """Deceleration at throttle_brake = -1, m/s^2."""
    steer_penalty: float = 5.0
    """Reward cost of full steering held for one second, metres."""
    brake_penalty: float = 1.0
    """Reward cost of full braking held for one second, metres."""
    collision_penalty: float = 10.0
    """Reward cost of a collision or of leaving the road, metres."""
    view_m: float = 50.0
    """Width and height of the square top-down view, metres."""
    view_behind_frac: float = 0.3
    """Share of the view behind the ego (the ego sits this far from the image's left edge)."""
    supersample: int = 2
    """Draw at this multiple of the image size, then area-downsample (anti-aliasing)."""

    def validate(self) -> "DrivingParams":
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"env.kwargs.{name}", getattr(self, name), allowed)

        need("lanes", 1 <= self.lanes <= 8, "1..8")
        need("vehicles", 0 <= self.vehicles <= 200, "0..200")
        need("max_speed", 1.0 <= self.max_speed <= 60.0, "1..60 m/s")
        need("ego_speed", 0.0 <= self.ego_speed <= self.max_speed, f"0..max_speed ({self.max_speed}) m/s")
        lo, hi = self.traffic_speed
        need("traffic_speed", 0.0 <= lo <= hi <= 60.0, "[low, high] with 0 <= low <= high <= 60 m/s")
        need("traffic_ahead_m", self.traffic_ahead_m >= 50.0, ">= 50 m")
        need("traffic_behind_m", self.traffic_behind_m >= 20.0, ">= 20 m")
        need("sim_hz", 1.0 <= self.sim_hz <= 100.0, "1..100 Hz")
        need("policy_hz", 0.5 <= self.policy_hz <= self.sim_hz, f"0.5..sim_hz ({self.sim_hz}) Hz")
        ratio = self.sim_hz / self.policy_hz
        need("policy_hz", abs(ratio - round(ratio)) < 1e-6, f"a divisor of sim_hz ({self.sim_hz})")
        need("steer_max_rad", 0.0 < self.steer_max_rad <= 0.8, "0 < angle <= 0.8 rad")
        need("max_accel", 0.0 < self.max_accel <= 15.0, "0 < a <= 15 m/s^2")
        need("max_brake", 0.0 < self.max_brake <= 15.0, "0 < b <= 15 m/s^2")
        for name in ("steer_penalty", "brake_penalty", "collision_penalty"):
            need(name, getattr(self, name) >= 0.0, ">= 0")
        need("view_m", 10.0 <= self.view_m <= 500.0, "10..500 m")
        need("view_behind_frac", 0.0 <= self.view_behind_frac <= 0.9, "0..0.9")
        need("supersample", 1 <= self.supersample <= 4, "1..4")
        return self


def build_params(cls: type, defaults: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """``cls`` (a params dataclass) from scenario defaults plus ``env.kwargs``; bad keys raise ConfigError."""
    names = {f.name for f in dataclasses.fields(cls)}
    base = cls()
    values = dict(defaults)
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"env.kwargs.{key}", value, "one of " + ", ".join(sorted(names)))
        default = getattr(base, key)
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            value = tuple(float(v) for v in value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            value = int(value) if ok else value
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        else:
            ok = True
        if not ok:
            raise ConfigError(f"env.kwargs.{key}", value, f"a value of the same type as {default!r}")
        values[key] = value
    return cls(**values).validate()


def straight_road_class() -> type:
    """highway-env's ``Road`` with a vectorised ``neighbour_vehicles`` for straight lanes.

    IDM/MOBIL traffic asks for its leader and follower in several lanes at every physics step, and the
    stock search converts every vehicle's position to lane coordinates one by one (O(n) Python calls per
    query, O(n^2) per step): it dominates the step time. During ``act()`` no vehicle moves, so positions
    are cached once and each query is a few numpy operations. Results equal the stock search (same
    on-lane test, same tie-breaking); anything but a plain straight lane falls back to it.
    """
    from highway_env.road.lane import StraightLane
    from highway_env.road.road import Road
    from highway_env.vehicle.objects import Landmark

    class StraightRoad(Road):
        _cache: Optional[tuple[list[Any], np.ndarray, dict[int, int]]] = None

        def act(self) -> None:
            others = [v for v in self.vehicles + self.objects if not isinstance(v, Landmark)]
            positions = np.array([v.position for v in others], dtype=float).reshape(-1, 2)
            self._cache = (others, positions, {id(v): i for i, v in enumerate(others)})
            try:
                super().act()
            finally:
                self._cache = None

        def neighbour_vehicles(self, vehicle: Any, lane_index: Any = None) -> tuple[Any, Any]:
            lane_index = lane_index or vehicle.lane_index
            if self._cache is None or not lane_index or self.neighbour_vehicles_connected_lanes:
                return super().neighbour_vehicles(vehicle, lane_index)
            lane = self.network.get_lane(lane_index)
            if type(lane) is not StraightLane:
                return super().neighbour_vehicles(vehicle, lane_index)
            others, positions, index = self._cache
            s = lane.local_coordinates(vehicle.position)[0]
            delta = positions - lane.start
            longitudinal = delta @ lane.direction
            lateral = delta @ lane.direction_lateral
            ok = ((np.abs(lateral) <= lane.width / 2 + 1.0) & (longitudinal >= -lane.VEHICLE_LENGTH)
                  & (longitudinal < lane.length + lane.VEHICLE_LENGTH))
            if id(vehicle) in index:
                ok[index[id(vehicle)]] = False
            front = rear = None
            ahead = ok & (longitudinal >= s)
            if ahead.any():
                best = longitudinal[ahead].min()
                front = others[int(np.flatnonzero(ahead & (longitudinal == best))[-1])]  # stock: last tie wins
            behind = ok & (longitudinal < s)
            if behind.any():
                best = longitudinal[behind].max()
                rear = others[int(np.flatnonzero(behind & (longitudinal == best))[0])]  # stock: first tie wins
            return front, rear

    return StraightRoad


class TopDownRenderer:
    """Draws road, objects and vehicles centred on the ego, with highway-env's pygame graphics.

    Output: (S, S, 3) uint8, the ego facing right, ``view_m`` metres across.
    """

    def __init__(self, size: int, view_m: float, behind_frac: float, supersample: int) -> None:
        import pygame
        from highway_env.road.graphics import WorldSurface

        self.size = size
        px = size * supersample
        self._surface = WorldSurface((px, px), 0, pygame.Surface((px, px)))
        self._surface.scaling = px / view_m
        self._surface.centering_position = [behind_frac, 0.5]

    def draw(self, road: Any, center: np.ndarray, edges: tuple[float, float],
             hidden: tuple[Any, ...] = ()) -> np.ndarray:
        """Frame of ``road`` around ``center``; off-road (lateral outside ``edges``) is grass; vehicles in
        ``hidden`` (occluded objects) are not drawn."""
        import pygame
        from highway_env.road.graphics import RoadGraphics
        from highway_env.vehicle.graphics import VehicleGraphics

        surface = self._surface
        surface.move_display_window_to(center)
        RoadGraphics.display(road, surface)
        width, height = surface.get_size()
        top = surface.pos2pix(0.0, edges[0])[1]
        bottom = surface.pos2pix(0.0, edges[1])[1]
        if top > 0:
            pygame.draw.rect(surface, GRASS_COLOR, (0, 0, width, min(top, height)))
        if bottom < height:
            pygame.draw.rect(surface, GRASS_COLOR, (0, max(bottom, 0), width, height - max(bottom, 0)))
        RoadGraphics.display_road_objects(road, surface, offscreen=True)
        for vehicle in road.vehicles:
            if not any(vehicle is h for h in hidden):
                VehicleGraphics.display(vehicle, surface, offscreen=True)
        frame = np.moveaxis(pygame.surfarray.array3d(surface), 0, 1)  # (W, H, 3) -> (H, W, 3)
        return resize_frame(frame, self.size)


class DrivingEnv(gym.Env):
    """Base of the embedded scenarios: ego dynamics, stepping, reward, metrics, rendering.

    Subclasses build the scene in :meth:`_populate` and may update it in :meth:`_after_substep` /
    :meth:`_after_step`; they set ``extra_info`` keys in :meth:`_scenario_info`.
    obs: (S, S, 3) uint8; action: float32 (2,) = [steer, throttle_brake] in [-1, 1].
    """

    metadata = {"render_modes": ["rgb_array"]}
    params_cls: type = DrivingParams
    params_defaults: dict[str, Any] = {}

    def __init__(self, name: str, seed: int, image_size: int = 84, action_repeat: int = 1,
                 **kwargs: Any) -> None:
        import highway_env  # noqa: F401 - imported for its side effects: fails early when missing

        self.name = name
        self.params = build_params(self.params_cls, self.params_defaults, kwargs)
        self.image_size = int(image_size)
        self.action_repeat = int(action_repeat)
        self.action_space = unit_action_space(2)
        self.observation_space = frame_space(self.image_size)
        self.render_mode = "rgb_array"
        p = self.params
        self.substeps = int(round(p.sim_hz / p.policy_hz))
        self.dt = 1.0 / p.sim_hz
        self._renderer = TopDownRenderer(self.image_size, p.view_m, p.view_behind_frac, p.supersample)
        self.road: Any = None
        self.ego: Any = None
        self._frame: Optional[np.ndarray] = None
        self._distance = 0.0
        self._offroad = False
        self.np_random, _ = gym.utils.seeding.np_random(int(seed))

    # --- scene ------------------------------------------------------------------------------------------
    def _make_road(self, lanes: int, speed_limit: float) -> Any:
        from highway_env.road.road import RoadNetwork

        network = RoadNetwork.straight_road_network(lanes, length=100_000.0, speed_limit=speed_limit)
        return straight_road_class()(network=network, np_random=self.np_random, record_history=False)

    def lane_center_y(self, lane: int) -> float:
        """Lateral coordinate of lane ``lane``'s centre line, metres (lane 0 is the leftmost)."""
        from highway_env.road.lane import StraightLane

        return lane * StraightLane.DEFAULT_WIDTH

    def road_edges(self) -> tuple[float, float]:
        """(left, right) lateral coordinates of the paved road's edges, metres."""
        from highway_env.road.lane import StraightLane

        w = StraightLane.DEFAULT_WIDTH
        return -w / 2, (self.num_lanes - 1) * w + w / 2

    @property
    def num_lanes(self) -> int:
        return self.params.lanes

    def _spawn_ego(self, lane: int, x: float, speed: float) -> Any:
        from highway_env.vehicle.kinematics import Vehicle

        ego = Vehicle(self.road, np.array([x, self.lane_center_y(lane)]), heading=0.0, speed=speed)
        ego.MIN_SPEED = 0.0
        ego.MAX_SPEED = self.params.max_speed
        ego.color = EGO_COLOR
        ego.check_collisions = True
        self.road.vehicles.append(ego)
        return ego

    def _populate(self) -> None:
        raise NotImplementedError

    # --- traffic ----------------------------------------------------------------------------------------
    def _new_traffic_car(self, x_lo: float, x_hi: float, tries: int = 20) -> Optional[Any]:
        """An IDM car in one of the traffic lanes, at least 15 m from any vehicle in its lane; None if no room."""
        from highway_env.vehicle.behavior import IDMVehicle

        p = self.params
        for _ in range(tries):
            lane = int(self._traffic_lanes[int(self.np_random.integers(len(self._traffic_lanes)))])
            x = float(self.np_random.uniform(x_lo, x_hi))
            y = self.lane_center_y(lane)
            if all(abs(v.position[0] - x) > 15.0 or abs(v.position[1] - y) > 2.0 for v in self.road.vehicles):
                speed = float(self.np_random.uniform(*p.traffic_speed))
                car = IDMVehicle(self.road, np.array([x, y]), heading=0.0, speed=speed, target_speed=speed,
                                 enable_lane_change=self._lane_changes)
                car.randomize_behavior()
                car.color = TRAFFIC_COLOR
                car.check_collisions = False  # the ego checks its own collisions; traffic never crashes alone
                return car
        return None

    def _add_traffic(self, lanes: Any, lane_changes: bool) -> None:
        """Spawn ``params.vehicles`` IDM cars in ``lanes`` between traffic_behind_m and traffic_ahead_m."""
        p = self.params
        self._traffic_lanes = list(lanes)
        self._lane_changes = lane_changes
        self._traffic: list[Any] = []
        if not self._traffic_lanes:
            return
        ego_x = float(self.ego.position[0])
        for _ in range(p.vehicles):
            car = self._new_traffic_car(ego_x - p.traffic_behind_m + 10.0, ego_x + p.traffic_ahead_m - 10.0)
            if car is not None:
                self.road.vehicles.append(car)
                self._traffic.append(car)

    def _recycle_traffic(self) -> None:
        """Respawn traffic that fell too far behind (ahead, out of view) or got too far ahead (behind)."""
        p = self.params
        ego_x = float(self.ego.position[0])
        for i, car in enumerate(self._traffic):
            gap = float(car.position[0]) - ego_x
            if gap < -p.traffic_behind_m:
                lo, hi = ego_x + 0.5 * p.traffic_ahead_m, ego_x + p.traffic_ahead_m - 10.0
            elif gap > p.traffic_ahead_m:
                lo, hi = ego_x - p.traffic_behind_m + 5.0, ego_x - 0.5 * p.traffic_behind_m
            else:
                continue
            new = self._new_traffic_car(lo, hi)
            if new is not None:
                self.road.vehicles = [new if v is car else v for v in self.road.vehicles]
                self._traffic[i] = new

    def _after_substep(self) -> None:
        """Scenario logic run after every physics step (hazard triggers)."""

    def _after_step(self) -> None:
        """Scenario logic run once per agent step (traffic recycling)."""

    def _scenario_info(self) -> dict[str, Any]:
        return {}

    def _hidden(self) -> tuple[Any, ...]:
        """Objects not drawn this frame (occluded hazards)."""
        return ()

    # --- gym API ----------------------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.road = self._make_road(self.num_lanes, speed_limit=self.params.max_speed)
        self.ego = None
        self._populate()
        if self.ego is None:
            raise EnvError(f"{self.name}: scenario built no ego vehicle")
        self._distance = 0.0
        self._offroad = False
        self._frame = self._draw()
        return self._frame, self._info(0)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.ego is None:
            raise EnvError(f"{self.name}: step() before reset()")
        steer, throttle_brake = (float(v) for v in check_action(action, 2, self.name))
        p = self.params
        accel = throttle_brake * (p.max_accel if throttle_brake > 0 else p.max_brake)
        self.ego.act({"steering": steer * p.steer_max_rad, "acceleration": accel})
        reward, taken, ended = 0.0, 0, False
        for _ in range(self.action_repeat):
            x0 = float(self.ego.position[0])
            for _ in range(self.substeps):
                self.road.act()
                self.road.step(self.dt)
                # highway-env only soft-limits speed; keep the ego in [0, max_speed] (no reversing)
                self.ego.speed = min(max(float(self.ego.speed), 0.0), p.max_speed)
                self._after_substep()
            progress = float(self.ego.position[0]) - x0
            self._distance += progress
            seconds = self.substeps * self.dt
            reward += progress - seconds * (p.steer_penalty * abs(steer) + p.brake_penalty * max(-throttle_brake, 0.0))
            taken += 1
            left, right = self.road_edges()
            self._offroad = not left <= float(self.ego.position[1]) <= right
            if self.ego.crashed or self._offroad:
                reward -= p.collision_penalty
                ended = True
                break
            self._after_step()
        self._frame = self._draw()
        return self._frame, reward, ended, False, self._info(taken)

    def _info(self, env_steps: int) -> dict[str, Any]:
        info = {
            "env_steps": env_steps,
            "distance_m": float(self._distance),
            "speed_mps": float(self.ego.speed),
            "collision": bool(self.ego.crashed),
            "offroad": bool(self._offroad),
        }
        info.update(self._scenario_info())
        return info

    def _draw(self) -> np.ndarray:
        return self._renderer.draw(self.road, self.ego.position, self.road_edges(), hidden=self._hidden())

    def render(self) -> np.ndarray:
        if self._frame is None:
            raise EnvError(f"{self.name}: render() before reset()")
        return self._frame.copy()

    def close(self) -> None:
        self.road = None
        self.ego = None


class HighwayScenario(DrivingEnv):
    """#HW: multi-lane highway with IDM/MOBIL traffic kept around the ego (see module docstring)."""

    def _populate(self) -> None:
        lane = int(self.np_random.integers(self.num_lanes))
        self.ego = self._spawn_ego(lane, x=self.params.traffic_behind_m + 20.0, speed=self.params.ego_speed)
        self._add_traffic(range(self.num_lanes), lane_changes=True)

    def _after_step(self) -> None:
        self._recycle_traffic()


HW_PROMPT = ("Top-down view of a multi-lane highway. You drive the green car, heading to the right; blue cars are "
             "traffic. Drive forward as far as possible: keep a high speed, overtake slower cars by changing "
             "lanes, never hit a car or leave the road, and steer smoothly.")


def make_highway(spec: EnvSpec, seed: int, image_size: int, action_repeat: int, **kwargs: Any) -> HighwayScenario:
    """Factory of ``driving-hw`` (kwargs: the fields of :class:`DrivingParams`)."""
    return HighwayScenario(spec.name, seed, image_size=image_size, action_repeat=action_repeat, **kwargs)


register_env(EnvSpec(
    name="driving-hw", family="driving", prompt=HW_PROMPT, action_description=DRIVING_ACTIONS, codec="driving",
    action_dim=2, default_action_repeat=1, factory="covr_envs.driving:make_highway",
    default_max_episode_steps=500, info_keys=DRIVING_INFO_KEYS,
))
