"""Embedded sudden-hazard scenario ``driving-gp``, modelled on CARLA #GP ("ghost pedestrian").

The road has ``lanes`` driving lanes plus, on the right, a parking lane. The ego starts in the rightmost
driving lane (next to the parking lane); IDM traffic drives in the other driving lanes (no lane changes), so
swerving left is not free. Along the road, every ``site_gap_m`` metres (sampled), a row of ``parked_cars``
parked cars stands in the parking lane with gaps of ``parked_gap_m`` between them. With probability
``hazard_prob`` a pedestrian waits on the kerb behind that row, lined up with one of the gaps.

The hazard, honestly:

- **Hidden.** Each frame, the pedestrian is drawn only when the straight line from the ego's centre to the
  pedestrian's centre crosses no parked car (2-D line of sight in the top-down plane); behind the row it
  is simply not in the image, and ``info["hazard_visible"]`` says when it is.
- **Triggered to meet the ego.** When the ego, at its current speed, would reach the pedestrian's position
  within the time the pedestrian needs to walk to the middle of the ego's lane (plus a jitter sampled in
  ``trigger_jitter_s``), the pedestrian starts walking across the road at a speed sampled in
  ``pedestrian_speed``. An ego that holds its speed therefore arrives as the pedestrian is in its lane; an
  ego that slowed down near the parked row triggers the pedestrian later and closer, with room to stop.
  Stepping out of the row (about 1.5 m) makes it visible, about 3 m of walking before the ego lane's centre.
- **Enters the ego lane.** It walks straight across (out of the gap, the ego lane, then the other lanes,
  where traffic brakes for it), and is removed once off the far side of the road.

Hitting the pedestrian (or a parked car, or traffic) is a collision and ends the episode. Reward, distance
and the other info keys are the shared ones of :mod:`covr_envs.driving`; this scenario adds
``hazard_active`` (a pedestrian is walking) and ``hazard_visible`` (a walking or waiting pedestrian is in
line of sight). Parked rows and pedestrians are created ahead of the ego as it drives and dropped behind it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from covr_envs.driving import DRIVING_ACTIONS, DrivingEnv, DrivingParams
from covr_envs.registry import DRIVING_INFO_KEYS, EnvSpec, register_env
from covr_ray.errors import ConfigError

PARKED_COLOR = (150, 150, 150)
LANE_WIDTH = 4.0  # highway-env's StraightLane.DEFAULT_WIDTH
PEDESTRIAN_COLOR = (255, 40, 40)


@dataclass
class HazardParams(DrivingParams):
    """Arguments of ``driving-gp`` (``env.kwargs``): the shared driving ones plus the hazard's."""

    lanes: int = 2
    """Driving lanes; a parking lane is added on their right."""
    vehicles: int = 6
    """Traffic vehicles in the driving lanes left of the ego's."""
    ego_speed: float = 10.0
    max_speed: float = 20.0
    traffic_speed: tuple[float, float] = (8.0, 13.0)
    traffic_ahead_m: float = 150.0
    traffic_behind_m: float = 60.0
    view_m: float = 40.0
    view_behind_frac: float = 0.25
    site_gap_m: tuple[float, float] = (80.0, 160.0)
    """Distance between two parked rows, metres (sampled uniformly)."""
    first_site_m: tuple[float, float] = (50.0, 90.0)
    """Distance from the ego's start to the first parked row, metres."""
    parked_cars: tuple[float, float] = (3.0, 6.0)
    """Cars per parked row (sampled integer in the range)."""
    parked_gap_m: tuple[float, float] = (1.5, 3.0)
    """Gap between two parked cars, metres."""
    hazard_prob: float = 0.75
    """Probability that a parked row hides a pedestrian."""
    pedestrian_speed: tuple[float, float] = (1.2, 2.5)
    """Walking speed of the pedestrian once it starts, m/s."""
    trigger_jitter_s: tuple[float, float] = (-0.4, 0.4)
    """Added to the trigger time; negative = the pedestrian steps out later (closer to the ego)."""

    def validate(self) -> "HazardParams":
        super().validate()
        for name, lo_ok in (("site_gap_m", 30.0), ("first_site_m", 20.0)):
            lo, hi = getattr(self, name)
            if not lo_ok <= lo <= hi:
                raise ConfigError(f"env.kwargs.{name}", getattr(self, name), f"[low, high] with {lo_ok} <= low <= high")
        lo, hi = self.parked_cars
        if not (1 <= lo <= hi <= 20):
            raise ConfigError("env.kwargs.parked_cars", self.parked_cars, "[low, high] with 1 <= low <= high <= 20")
        lo, hi = self.parked_gap_m
        if not (1.2 <= lo <= hi <= 10):
            raise ConfigError("env.kwargs.parked_gap_m", self.parked_gap_m,
                              "[low, high] with 1.2 <= low <= high <= 10 m (the pedestrian needs 1 m)")
        if not 0.0 <= self.hazard_prob <= 1.0:
            raise ConfigError("env.kwargs.hazard_prob", self.hazard_prob, "0..1")
        lo, hi = self.pedestrian_speed
        if not (0.3 <= lo <= hi <= 8.0):
            raise ConfigError("env.kwargs.pedestrian_speed", self.pedestrian_speed, "[low, high] within 0.3..8 m/s")
        lo, hi = self.trigger_jitter_s
        if not (-3.0 <= lo <= hi <= 3.0):
            raise ConfigError("env.kwargs.trigger_jitter_s", self.trigger_jitter_s, "[low, high] within -3..3 s")
        return self


def segment_hits_box(p0: np.ndarray, p1: np.ndarray, box_min: np.ndarray, box_max: np.ndarray) -> bool:
    """Does the segment p0 -> p1 intersect the axis-aligned box [box_min, box_max]? (2-D slab test)."""
    t0, t1 = 0.0, 1.0
    d = p1 - p0
    for axis in range(2):
        if abs(d[axis]) < 1e-12:
            if p0[axis] < box_min[axis] or p0[axis] > box_max[axis]:
                return False
            continue
        ta = (box_min[axis] - p0[axis]) / d[axis]
        tb = (box_max[axis] - p0[axis]) / d[axis]
        if ta > tb:
            ta, tb = tb, ta
        t0, t1 = max(t0, ta), min(t1, tb)
        if t0 > t1:
            return False
    return True


@functools.lru_cache(maxsize=1)
def _pedestrian_class() -> type:
    from highway_env.vehicle.kinematics import Vehicle

    class Pedestrian(Vehicle):
        """A walker: a 1 m x 1 m body that moves straight along its heading at constant speed."""

        LENGTH = 1.0
        WIDTH = 1.0

    return Pedestrian


@dataclass
class _Site:
    """One parked row and (maybe) its pedestrian."""

    x_start: float
    x_end: float
    parked: list[Any]
    pedestrian: Optional[Any]
    state: str = "waiting"  # waiting -> walking -> gone
    jitter_s: float = 0.0
    walk_speed: float = 1.0


class HazardScenario(DrivingEnv):
    """#GP-style: pedestrians step out from behind parked cars into the ego lane (see module docstring)."""

    params_cls = HazardParams

    @property
    def num_lanes(self) -> int:
        return self.params.lanes + 1  # + the parking lane

    @property
    def ego_lane(self) -> int:
        return self.params.lanes - 1

    @property
    def parking_lane(self) -> int:
        return self.params.lanes

    def _populate(self) -> None:
        p: HazardParams = self.params
        self._Pedestrian = _pedestrian_class()
        self._sites: list[_Site] = []
        self.ego = self._spawn_ego(self.ego_lane, x=100.0, speed=p.ego_speed)
        self._add_traffic(range(self.ego_lane), lane_changes=False)
        self._next_site_x = 100.0 + float(self.np_random.uniform(*p.first_site_m))
        self._extend_sites()

    # --- parked rows and pedestrians --------------------------------------------------------------------
    def _add_site(self, x: float) -> _Site:
        from highway_env.vehicle.kinematics import Vehicle

        p: HazardParams = self.params
        n = int(self.np_random.integers(int(p.parked_cars[0]), int(p.parked_cars[1]) + 1))
        y = self.lane_center_y(self.parking_lane)
        parked, gaps, cursor = [], [], x
        for i in range(n):
            car = Vehicle(self.road, np.array([cursor + Vehicle.LENGTH / 2, y]), heading=0.0, speed=0.0)
            car.color = PARKED_COLOR
            car.check_collisions = False
            parked.append(car)
            self.road.vehicles.append(car)
            cursor += Vehicle.LENGTH
            if i < n - 1:
                gap = float(self.np_random.uniform(*p.parked_gap_m))
                gaps.append(cursor + gap / 2)
                cursor += gap
        pedestrian = None
        if gaps and self.np_random.uniform() < p.hazard_prob:
            gx = gaps[int(self.np_random.integers(len(gaps)))]
            # waits inside the gap, kerb side of the parking lane: the car before the gap hides it
            pedestrian = self._Pedestrian(self.road, np.array([gx, y + 0.5]), heading=-math.pi / 2, speed=0.0)
            pedestrian.color = PEDESTRIAN_COLOR
            pedestrian.check_collisions = False
            self.road.vehicles.append(pedestrian)
        site = _Site(x_start=x, x_end=cursor, parked=parked, pedestrian=pedestrian,
                     jitter_s=float(self.np_random.uniform(*p.trigger_jitter_s)),
                     walk_speed=float(self.np_random.uniform(*p.pedestrian_speed)))
        self._sites.append(site)
        return site

    def _extend_sites(self) -> None:
        p: HazardParams = self.params
        horizon = float(self.ego.position[0]) + p.traffic_ahead_m
        while self._next_site_x < horizon:
            site = self._add_site(self._next_site_x)
            self._next_site_x = site.x_end + float(self.np_random.uniform(*p.site_gap_m))

    def _drop_old_sites(self) -> None:
        behind = float(self.ego.position[0]) - self.params.traffic_behind_m
        keep = []
        for site in self._sites:
            if site.x_end < behind and (site.pedestrian is None or site.state != "walking"):
                drop = set(map(id, site.parked)) | ({id(site.pedestrian)} if site.pedestrian is not None else set())
                self.road.vehicles = [v for v in self.road.vehicles if id(v) not in drop]
            else:
                keep.append(site)
        self._sites = keep

    def _trigger_time(self, site: _Site) -> float:
        """Seconds the pedestrian needs to walk from the kerb to the middle of the ego's current lane."""
        ped = site.pedestrian
        lane = int(np.clip(round(float(self.ego.position[1]) / LANE_WIDTH), 0, self.parking_lane))
        return (float(ped.position[1]) - self.lane_center_y(lane)) / max(site.walk_speed, 1e-3)

    def _after_substep(self) -> None:
        ego_x, speed = float(self.ego.position[0]), float(self.ego.speed)
        for site in self._sites:
            ped = site.pedestrian
            if ped is None:
                continue
            if site.state == "waiting":
                ahead = float(ped.position[0]) - ego_x - self.ego.LENGTH / 2
                if 0.0 < ahead < 80.0 and ahead / max(speed, 0.1) <= self._trigger_time(site) + site.jitter_s:
                    site.state = "walking"
                    ped.speed = site.walk_speed
            elif site.state == "walking":
                left, _ = self.road_edges()
                if float(ped.position[1]) < left - 2.0:
                    site.state = "gone"
                    self.road.vehicles = [v for v in self.road.vehicles if v is not ped]

    def _after_step(self) -> None:
        self._recycle_traffic()
        self._extend_sites()
        self._drop_old_sites()

    # --- visibility and info ----------------------------------------------------------------------------
    def pedestrian_visible(self, site: _Site) -> bool:
        """Line of sight from the ego's centre to the pedestrian, blocked by the parked cars."""
        ped = site.pedestrian
        if ped is None or site.state == "gone":
            return False
        p0, p1 = np.asarray(self.ego.position, float), np.asarray(ped.position, float)
        for car in site.parked:
            half = np.array([car.LENGTH / 2, car.WIDTH / 2])
            if segment_hits_box(p0, p1, car.position - half, car.position + half):
                return False
        return True

    def _hidden(self) -> tuple[Any, ...]:
        return tuple(s.pedestrian for s in self._sites
                     if s.pedestrian is not None and s.state != "gone" and not self.pedestrian_visible(s))

    def _scenario_info(self) -> dict[str, Any]:
        sites = [s for s in self._sites if s.pedestrian is not None and s.state != "gone"]
        return {
            "hazard_active": any(s.state == "walking" for s in sites),
            "hazard_visible": any(self.pedestrian_visible(s) for s in sites),
        }

    def pedestrians(self) -> list[tuple[str, np.ndarray]]:
        """(state, position) of every pedestrian still in the scene, for tests and debugging."""
        return [(s.state, np.asarray(s.pedestrian.position, float).copy()) for s in self._sites
                if s.pedestrian is not None and s.state != "gone"]


GP_PROMPT = ("Top-down view of a road with a lane of parked grey cars along its right edge. You drive the green "
             "car, heading to the right; blue cars are traffic. A pedestrian (small red square) may step out "
             "from between the parked cars into your lane without warning. Drive forward as far as possible, "
             "slow down when passing parked cars, and never hit a pedestrian or a car.")


def make_hazard(spec: EnvSpec, seed: int, image_size: int, action_repeat: int, **kwargs: Any) -> HazardScenario:
    """Factory of ``driving-gp`` (kwargs: the fields of :class:`HazardParams`)."""
    return HazardScenario(spec.name, seed, image_size=image_size, action_repeat=action_repeat, **kwargs)


register_env(EnvSpec(
    name="driving-gp", family="driving", prompt=GP_PROMPT, action_description=DRIVING_ACTIONS, codec="driving",
    action_dim=2, default_action_repeat=1, factory="covr_envs.driving_hazard:make_hazard",
    default_max_episode_steps=500, info_keys=DRIVING_INFO_KEYS + ("hazard_active", "hazard_visible"),
))
