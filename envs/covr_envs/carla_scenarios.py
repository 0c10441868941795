"""CARLA #HW and #GP scenarios, reward and driving distance (pure logic over the client API).

Both scenarios follow the CARLA literature of pixel RL (DBC, Zhang et al. 2021, and the works that reuse
its setup): synchronous mode with a fixed delta (20 Hz), 1000-step episodes, and the reward

    r_t = v_ego . u_lane * dt  -  lambda_i * |collision impulse|  -  lambda_s * |steer|

where ``u_lane`` is the unit forward vector of the lane under the ego. Driving distance is the sum of the
first term (metres of progress along the lane).

- **#HW** (``carla-hw``): the ego spawns on a multi-lane highway (Town04's loop: a spawn point whose road
  has at least ``min_highway_lanes`` lanes in the ego's direction) among ``num_vehicles`` autopilot cars
  driven by the traffic manager.
- **#GP** (``carla-gp``, "ghost pedestrian"): the ego spawns in the rightmost lane of a straight stretch;
  ``hazard_distance_m`` ahead, a large vehicle is parked at the right roadside, and a pedestrian waits just
  in front of it, hidden from the ego by its body. When the ego would reach the pedestrian, at its current
  speed, within the time the pedestrian needs to walk to the middle of the ego lane (plus a sampled
  jitter), the pedestrian walks out across the lane. Background traffic as in #HW.

Nothing here imports ``carla``: the env passes the module in, so the logic runs against the real client
or against a small fake of the same calls (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from covr_ray.errors import ConfigError, EnvError


@dataclass
class CarlaParams:
    """Simulator arguments of the CARLA envs (``env.kwargs``); the connection is in ``env.carla``."""

    camera: str = "chase"
    """``chase`` (behind and above the ego, looking forward) or ``front`` (on the windscreen)."""
    fov: float = 90.0
    """Horizontal field of view of the RGB camera, degrees."""
    ego_blueprint: str = "vehicle.tesla.model3"
    """Blueprint of the ego vehicle."""
    traffic_vehicles: int = -1
    """Autopilot vehicles; -1 = ``env.carla.num_vehicles``."""
    steer_penalty: float = 1.0
    """lambda_s: reward cost of |steer| per tick."""
    impulse_penalty: float = 1e-4
    """lambda_i: reward cost per N*s of collision impulse."""
    terminate_on_collision: bool = True
    """End the episode at the first collision."""
    min_highway_lanes: int = 3
    """#HW: lanes in the ego's direction that make a road a highway."""
    hazard_distance_m: tuple[float, float] = (35.0, 55.0)
    """#GP: distance from the ego's start to the parked occluder, metres."""
    pedestrian_speed: tuple[float, float] = (1.2, 2.5)
    """#GP: walking speed once the pedestrian steps out, m/s."""
    trigger_jitter_s: tuple[float, float] = (-0.4, 0.4)
    """#GP: added to the trigger time, seconds."""
    occluder_blueprint: str = "vehicle.carlamotors.carlacola"
    """#GP: blueprint of the parked vehicle that hides the pedestrian (a van)."""

    def validate(self) -> "CarlaParams":
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"env.kwargs.{name}", getattr(self, name), allowed)

        need("camera", self.camera in ("chase", "front"), "chase or front")
        need("fov", 10.0 <= self.fov <= 170.0, "10..170 degrees")
        need("traffic_vehicles", self.traffic_vehicles >= -1, ">= 0, or -1 for env.carla.num_vehicles")
        need("steer_penalty", self.steer_penalty >= 0, ">= 0")
        need("impulse_penalty", self.impulse_penalty >= 0, ">= 0")
        need("min_highway_lanes", 1 <= self.min_highway_lanes <= 8, "1..8")
        lo, hi = self.hazard_distance_m
        need("hazard_distance_m", 10.0 <= lo <= hi <= 200.0, "[low, high] within 10..200 m")
        lo, hi = self.pedestrian_speed
        need("pedestrian_speed", 0.3 <= lo <= hi <= 8.0, "[low, high] within 0.3..8 m/s")
        lo, hi = self.trigger_jitter_s
        need("trigger_jitter_s", -3.0 <= lo <= hi <= 3.0, "[low, high] within -3..3 s")
        return self


# --- reward and distance ---------------------------------------------------------------------------------

def lane_progress(velocity: Any, forward: Any, dt: float) -> float:
    """Metres the ego advanced along the lane in ``dt``: ``(v . u_lane) * dt`` (negative when reversing)."""
    return float(velocity.x * forward.x + velocity.y * forward.y + velocity.z * forward.z) * float(dt)


def vector_norm(v: Any) -> float:
    """Length of a carla.Vector3D-like object."""
    return math.sqrt(v.x * v.x + v.y * v.y + v.z * v.z)


def tick_reward(progress_m: float, impulse: float, steer: float, params: CarlaParams) -> float:
    """One tick's reward: progress minus the collision-impulse and steering terms."""
    return progress_m - params.impulse_penalty * impulse - params.steer_penalty * abs(steer)


# --- map queries -----------------------------------------------------------------------------------------

def _is_driving(carla: Any, wp: Optional[Any], lane_id: int) -> bool:
    return wp is not None and wp.lane_type == carla.LaneType.Driving and (wp.lane_id > 0) == (lane_id > 0)


def lanes_same_direction(carla: Any, wp: Any) -> int:
    """Driving lanes of ``wp``'s road going the same way as ``wp`` (itself included)."""
    count = 1
    for step in ("get_left_lane", "get_right_lane"):
        cur = wp
        for _ in range(10):
            cur = getattr(cur, step)()
            if not _is_driving(carla, cur, wp.lane_id):
                break
            count += 1
    return count


def is_rightmost(carla: Any, wp: Any) -> bool:
    """No driving lane in the same direction on the right of ``wp``."""
    return not _is_driving(carla, wp.get_right_lane(), wp.lane_id)


def straight_ahead(wp: Any, distance_m: float, step_m: float = 5.0, max_yaw_change: float = 10.0) -> bool:
    """The lane continues for ``distance_m`` without a junction and turns by less than ``max_yaw_change``."""
    yaw0 = wp.transform.rotation.yaw
    cur, travelled = wp, 0.0
    while travelled < distance_m:
        nxt = cur.next(step_m)
        if not nxt:
            return False
        cur = nxt[0]
        travelled += step_m
        if cur.is_junction:
            return False
        if abs((cur.transform.rotation.yaw - yaw0 + 180.0) % 360.0 - 180.0) > max_yaw_change:
            return False
    return True


def offset(carla: Any, location: Any, vec: Any, metres: float) -> Any:
    """``location + metres * vec`` as a new carla.Location."""
    return carla.Location(x=location.x + vec.x * metres, y=location.y + vec.y * metres,
                          z=location.z + vec.z * metres)


# --- scenarios -------------------------------------------------------------------------------------------

class CarlaScenario:
    """Builds one episode's scene through ``env`` (spawn helpers, rng) and updates it every tick."""

    name = ""

    def spawn_ego(self, env: Any) -> Any:
        raise NotImplementedError

    def populate(self, env: Any) -> None:
        """Scene actors besides the ego and the background traffic (hazards)."""

    def on_tick(self, env: Any) -> None:
        """Called after every world tick."""

    def info(self) -> dict[str, Any]:
        return {}


def _spawn_ego_at(env: Any, candidates: list[Any], what: str) -> Any:
    if not candidates:
        raise EnvError(f"CARLA map {env.conn.map.name!r} has no spawn point for {what}; "
                       "set env.carla.town to a map that has one (Town04 for #HW)")
    order = env.rng.permutation(len(candidates))
    for i in order[: min(len(order), 20)]:
        ego = env.spawn(env.blueprint(env.params.ego_blueprint), candidates[int(i)])
        if ego is not None:
            return ego
    raise EnvError(f"CARLA: every tried spawn point for {what} was occupied")


class HighwayScenario(CarlaScenario):
    """#HW: the ego on a highway among autopilot traffic."""

    name = "hw"

    def spawn_ego(self, env: Any) -> Any:
        carla, cmap = env.carla, env.conn.map
        points = [sp for sp in env.call(cmap.get_spawn_points)
                  if lanes_same_direction(carla, cmap.get_waypoint(sp.location)) >= env.params.min_highway_lanes]
        return _spawn_ego_at(env, points, f"a highway of >= {env.params.min_highway_lanes} lanes")


class GhostPedestrianScenario(CarlaScenario):
    """#GP: a pedestrian steps out from behind a parked van into the ego's lane."""

    name = "gp"

    def __init__(self) -> None:
        self.walker: Any = None
        self.occluder: Any = None
        self.state = "none"  # none -> waiting -> walking
        self.direction: Any = None
        self.walk_speed = 1.0
        self.jitter_s = 0.0
        self.cross_m = 0.0

    def spawn_ego(self, env: Any) -> Any:
        carla, cmap, p = env.carla, env.conn.map, env.params
        need = p.hazard_distance_m[1] + 20.0
        points = []
        for sp in env.call(cmap.get_spawn_points):
            wp = cmap.get_waypoint(sp.location)
            if wp is not None and is_rightmost(carla, wp) and straight_ahead(wp, need):
                points.append(sp)
        return _spawn_ego_at(env, points, "a straight rightmost lane")

    def populate(self, env: Any) -> None:
        carla, p = env.carla, env.params
        ego_wp = env.call(env.conn.map.get_waypoint, env.call(env.ego.get_transform).location)
        ahead = ego_wp.next(float(env.rng.uniform(*p.hazard_distance_m)))
        if not ahead:
            raise EnvError("CARLA #GP: the ego lane ends before the hazard distance")
        wp = ahead[0]
        fwd, right = wp.transform.get_forward_vector(), wp.transform.get_right_vector()
        half_lane = float(wp.lane_width) / 2.0
        # the van parks at the kerb, the pedestrian waits just past its front, kerb side: hidden by its body
        van_loc = offset(carla, wp.transform.location, right, half_lane + 1.3)
        van_tf = carla.Transform(offset(carla, van_loc, carla.Vector3D(0, 0, 1), 0.3), wp.transform.rotation)
        self.occluder = env.spawn(env.blueprint(p.occluder_blueprint), van_tf)
        if self.occluder is not None:
            env.call(self.occluder.apply_control, carla.VehicleControl(hand_brake=True))
        walker_loc = offset(carla, offset(carla, van_loc, fwd, 3.8), right, 0.6)
        walker_tf = carla.Transform(offset(carla, walker_loc, carla.Vector3D(0, 0, 1), 1.0), wp.transform.rotation)
        self.walker = env.spawn(env.blueprint("walker.pedestrian.*"), walker_tf)
        if self.walker is None:
            raise EnvError("CARLA #GP: could not spawn the pedestrian at the kerb")
        self.direction = carla.Vector3D(x=-right.x, y=-right.y, z=0.0)
        self.cross_m = half_lane + 1.3 + 0.6  # kerb-side waiting spot -> middle of the ego lane
        self.walk_speed = float(env.rng.uniform(*p.pedestrian_speed))
        self.jitter_s = float(env.rng.uniform(*p.trigger_jitter_s))
        self.state = "waiting"

    def should_trigger(self, ahead_m: float, speed_mps: float) -> bool:
        """Step out when the ego would arrive (at its speed) by the time the pedestrian is mid-lane."""
        if self.state != "waiting" or not 0.0 < ahead_m < 80.0:
            return False
        return ahead_m / max(speed_mps, 0.1) <= self.cross_m / self.walk_speed + self.jitter_s

    def on_tick(self, env: Any) -> None:
        if self.state != "waiting":
            return
        ego_tf = env.call(env.ego.get_transform)
        walker_loc = env.call(self.walker.get_transform).location
        fwd = ego_tf.get_forward_vector()
        ahead = ((walker_loc.x - ego_tf.location.x) * fwd.x + (walker_loc.y - ego_tf.location.y) * fwd.y)
        if self.should_trigger(ahead, vector_norm(env.call(env.ego.get_velocity))):
            env.call(self.walker.apply_control, env.carla.WalkerControl(self.direction, self.walk_speed))
            self.state = "walking"

    def info(self) -> dict[str, Any]:
        return {"hazard_active": self.state == "walking"}


SCENARIOS = {"hw": HighwayScenario, "gp": GhostPedestrianScenario}


def image_to_rgb(image: Any) -> np.ndarray:
    """A carla.Image (BGRA bytes) as (H, W, 3) uint8 RGB."""
    data = np.frombuffer(image.raw_data, dtype=np.uint8)
    expected = int(image.height) * int(image.width) * 4
    if data.size != expected:
        raise EnvError(f"CARLA image has {data.size} bytes, expected {expected} ({image.height}x{image.width} BGRA)")
    return np.ascontiguousarray(data.reshape(int(image.height), int(image.width), 4)[..., 2::-1])
