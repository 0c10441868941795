"""When fine-tune rounds happen (adaptive progressive fine-tuning) and when guidance switches on.

Paper: the interval grows as ``psi_{c+1} = psi_c + psi_c * c``. Indexing used here: ``c = 0, 1, 2, ...``
is the index of a round, 0 for the first; ``psi_0 = first_interval`` is the env steps before round 0, and
``psi_{c+1}`` is the gap between round ``c`` and round ``c + 1``. Round ``c`` therefore happens at env step
``T_c = psi_0 + ... + psi_c``. Since ``psi_{c+1} = psi_c (1 + c)``, ``psi_c = c! * psi_0`` (intervals
``psi_0, psi_0, 2 psi_0, 6 psi_0, 24 psi_0, ...``), each optionally capped at ``max_interval``.

First round points (env steps, action repeat counted) of the shipped presets' ``first_interval``:

=====================================  ===============  ============================================
presets                                first_interval   rounds at
=====================================  ===============  ============================================
smoke                                  100              100, 200, 400, 1000, 3400
driving-hw/gp, carla-hw/gp             5000             5000, 10000, 20000, 50000, 170000
dmc-* (100K tasks)                     2500             2500, 5000, 10000, 25000, 85000, 385000
dmc-hopper-hop, walker-run, pendulum   10000            10000, 20000, 40000, 100000, 340000
=====================================  ===============  ============================================

So a 100K DMControl run has 5 rounds, a 100K driving run 4, a 500K hard task 4, the 400-step smoke run 3.
Guidance (the VLM regulariser on the actor loss) is on once ``cold_start_rounds`` rounds have completed:
DMControl (4) from 25000 env steps, driving (2) from 10000.
The state (:meth:`FinetuneSchedule.to_dict` / :meth:`FinetuneSchedule.from_dict`) goes into checkpoints.
"""

from __future__ import annotations

from typing import Any, Optional

from covr_ray.config import ScheduleConfig
from covr_ray.errors import CheckpointError, FinetuneDataError


def next_interval(interval: int, c: int, max_interval: Optional[int] = None) -> int:
    """``psi_{c+1} = psi_c + psi_c * c``, capped at ``max_interval``; ``c`` is the round just completed."""
    nxt = interval + interval * c
    return nxt if max_interval is None else min(nxt, max_interval)


def round_points(first_interval: int, n: int, max_interval: Optional[int] = None) -> list[int]:
    """Env steps of the first ``n`` rounds: ``[T_0, T_1, ...]`` with ``T_c = psi_0 + ... + psi_c``."""
    if first_interval < 1 or n < 0:
        raise FinetuneDataError(f"first_interval {first_interval!r} must be >= 1 and n {n!r} >= 0")
    psi = first_interval if max_interval is None else min(first_interval, max_interval)
    points, at = [], psi
    for c in range(n):
        points.append(at)
        psi = next_interval(psi, c, max_interval)
        at += psi
    return points


class FinetuneSchedule:
    """Round bookkeeping of one run.

    Attributes:
        round: rounds completed so far (also the index ``c`` of the next round).
        next_round_at: env step at which the next round is due.
        interval: ``psi_c``, the gap that led to ``next_round_at``.
    """

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg
        self.round = 0
        self.interval = cfg.first_interval if cfg.max_interval is None else min(cfg.first_interval,
                                                                                  cfg.max_interval)
        self.next_round_at = self.interval

    @property
    def guidance_on(self) -> bool:
        """True once ``cold_start_rounds`` rounds have completed (the regulariser is on)."""
        return self.round >= self.cfg.cold_start_rounds

    def due(self, env_steps: int) -> bool:
        """True when a round should run now (``env_steps >= next_round_at``)."""
        return env_steps >= self.next_round_at

    def complete_round(self, env_steps: int) -> dict[str, float]:
        """Record that round ``c = self.round`` finished; schedule round ``c + 1`` at
        ``next_round_at + psi_{c+1}`` (anchored to the scheduled point, so the sequence does not drift
        when the orchestrator notices a due round a little late). Returns ``schedule/*`` metrics."""
        if not self.due(env_steps):
            raise FinetuneDataError(f"round {self.round} completed at env step {env_steps}, before it was due "
                                    f"at {self.next_round_at}")
        self.interval = next_interval(self.interval, self.round, self.cfg.max_interval)
        self.next_round_at += self.interval
        self.round += 1
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """``schedule/round``, ``schedule/next_round_at``, ``schedule/interval``, ``schedule/guidance_on``."""
        return {"schedule/round": float(self.round), "schedule/next_round_at": float(self.next_round_at),
                "schedule/interval": float(self.interval), "schedule/guidance_on": float(self.guidance_on)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for a checkpoint."""
        return {"version": 1, "round": self.round, "next_round_at": self.next_round_at,
                "interval": self.interval, "first_interval": self.cfg.first_interval}

    @classmethod
    def from_dict(cls, cfg: ScheduleConfig, data: dict[str, Any]) -> "FinetuneSchedule":
        """Restore from :meth:`to_dict` output.

        Raises:
            CheckpointError: malformed state, or a state saved under another ``first_interval``.
        """
        if not isinstance(data, dict) or data.get("version") != 1:
            raise CheckpointError(f"schedule state {data!r}: expected a mapping with version 1")
        try:
            rnd, at, interval, first = (data[k] for k in ("round", "next_round_at", "interval", "first_interval"))
        except KeyError as exc:
            raise CheckpointError(f"schedule state {data!r} lacks {exc.args[0]!r}") from exc
        for key, v, low in (("round", rnd, 0), ("next_round_at", at, 1), ("interval", interval, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CheckpointError(f"schedule state {key}={v!r}; expected an integer >= {low}")
        if first != cfg.first_interval:
            raise CheckpointError(f"schedule state was saved with first_interval={first!r}; this run's config "
                                  f"has schedule.first_interval={cfg.first_interval}")
        sched = cls(cfg)
        sched.round, sched.next_round_at, sched.interval = rnd, at, interval
        return sched
