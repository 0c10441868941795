"""When fine-tune rounds happen (adaptive progressive fine-tuning) and when guidance switches on.

Paper: the interval grows as ``psi_{c+1} = psi_c + psi_c * c``. Indexing used here: ``c = 0, 1, 2, ...``
is the index of a round, 0 for the first; ``psi_0 = first_interval`` is the env steps before round 0, and
``psi_{c+1}`` is the gap between round ``c`` and round ``c + 1``. Since ``psi_{c+1} = psi_c (1 + c)``,
``psi_c = c! * psi_0`` (intervals ``psi_0, psi_0, 2 psi_0, 6 psi_0, 24 psi_0, ...``), each optionally
capped at ``max_interval``.

The clock starts after the warm-up: the first ``sac.learning_starts`` agent steps take uniform-random
actions, which must not teach the VLM, so round ``c`` happens at env step ``W + psi_0 + ... + psi_c`` with
``W`` the warm-up's env steps (``sac.learning_starts`` agent steps times ``env.action_repeat``).
Round points (env steps, action repeat counted) of the shipped presets:

=====================================  ======  =====  ==============================================
presets                                psi_0   W      rounds at
=====================================  ======  =====  ==============================================
smoke                                  100     50     150, 250, 450
demo                                   250     100    350, 600, 1100
driving-hw/gp, carla-hw/gp             5000    1000   6000, 11000, 21000, 51000
dmc cartpole-swingup (repeat 8)        2500    8000   10500, 13000, 18000, 33000, 93000
dmc finger-spin, walker-walk (2)       2500    2000   4500, 7000, 12000, 27000, 87000
dmc reacher, cheetah, ball_in_cup (4)  2500    4000   6500, 9000, 14000, 29000, 89000
dmc hopper-hop, pendulum (4)           10000   4000   14000, 24000, 44000, 104000, 344000
dmc walker-run (2)                     10000   2000   12000, 22000, 42000, 102000, 342000
=====================================  ======  =====  ==============================================

So a 100K DMControl run has 5 rounds, a 100K driving run 4, a 500K hard task 5, the 400-step smoke run 2.
Guidance (the VLM regulariser on the actor loss) is on once ``cold_start_rounds`` rounds have *completed*
(a new adapter trained and published): DMControl (4) from the fourth round, driving (2) from the second.
A failed round (the LoRA trainer erred or timed out, or trained nothing) does not count: it is retried one
interval later (:meth:`FinetuneSchedule.fail_round`) with D_f kept.
The state (:meth:`FinetuneSchedule.to_dict` / :meth:`FinetuneSchedule.from_dict`) goes into checkpoints.
"""

from __future__ import annotations

from typing import Any, Optional

from covr_ray.config import CovrConfig, ScheduleSection
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


def prior_weight(cfg: CovrConfig, guidance_on: bool) -> float:
    """lambda of the regulariser: ``sac.lam`` while guidance is on and the prior enabled, else 0 (the update is
    then the base algorithm's). The one rule; the learner starts with ``prior_weight(cfg, cold_start_rounds
    == 0)`` and the loop re-applies it after every round."""
    return cfg.sac.lam if (cfg.prior.enabled and guidance_on) else 0.0


class FinetuneSchedule:
    """Round bookkeeping of one run.

    Args:
        cfg: the schedule section.
        start_at: env step at which the round clock starts (the end of the warm-up).

    Attributes:
        round: rounds completed so far (also the index ``c`` of the next round).
        failed: rounds that failed (retried later; they do not count toward the cold start).
        next_round_at: env step at which the next round is due.
        interval: ``psi_c``, the gap that led to ``next_round_at``.
    """

    def __init__(self, cfg: ScheduleSection, start_at: int = 0) -> None:
        if isinstance(start_at, bool) or not isinstance(start_at, int) or start_at < 0:
            raise FinetuneDataError(f"schedule start_at {start_at!r}; expected an integer >= 0 (env steps)")
        self.cfg = cfg
        self.start_at = start_at
        self.round = 0
        self.failed = 0
        self.interval = cfg.first_interval if cfg.max_interval is None else min(cfg.first_interval,
                                                                                  cfg.max_interval)
        self.next_round_at = start_at + self.interval

    @property
    def guidance_on(self) -> bool:
        """True once ``cold_start_rounds`` rounds have completed (the regulariser is on)."""
        return self.round >= self.cfg.cold_start_rounds

    def due(self, env_steps: int) -> bool:
        """True when a round should run now (``env_steps >= next_round_at``)."""
        return env_steps >= self.next_round_at

    def complete_round(self, env_steps: int, after_checkpoint: bool = False) -> dict[str, float]:
        """Record that round ``c = self.round`` finished; schedule round ``c + 1`` at
        ``next_round_at + psi_{c+1}`` (anchored to the scheduled point, so the sequence does not drift
        when the orchestrator notices a due round a little late). Returns ``schedule/*`` metrics.

        ``after_checkpoint``: the round completed after the checkpoint a resumed run restored, at a point its
        restored clock ``env_steps`` may not have reached again; it is not checked against that clock."""
        if not after_checkpoint and not self.due(env_steps):
            raise FinetuneDataError(f"round {self.round} completed at env step {env_steps}, before it was due "
                                    f"at {self.next_round_at}")
        self.interval = next_interval(self.interval, self.round, self.cfg.max_interval)
        self.next_round_at += self.interval
        self.round += 1
        return self.metrics()

    def fail_round(self, env_steps: int) -> dict[str, float]:
        """Record that round ``c = self.round`` failed: it does not count (``round`` and the interval stay),
        and it is retried ``psi_c`` env steps after its scheduled point. Returns ``schedule/*`` metrics."""
        if not self.due(env_steps):
            raise FinetuneDataError(f"round {self.round} failed at env step {env_steps}, before it was due "
                                    f"at {self.next_round_at}")
        self.failed += 1
        while self.next_round_at <= env_steps:  # anchored, and never due again at once
            self.next_round_at += self.interval
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """``schedule/round``, ``schedule/failed_rounds``, ``schedule/next_round_at``, ``schedule/interval``,
        ``schedule/guidance_on``."""
        return {"schedule/round": float(self.round), "schedule/failed_rounds": float(self.failed),
                "schedule/next_round_at": float(self.next_round_at), "schedule/interval": float(self.interval),
                "schedule/guidance_on": float(self.guidance_on)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for a checkpoint."""
        return {"version": 2, "round": self.round, "failed": self.failed, "next_round_at": self.next_round_at,
                "interval": self.interval, "first_interval": self.cfg.first_interval, "start_at": self.start_at}

    @classmethod
    def from_dict(cls, cfg: ScheduleSection, data: dict[str, Any]) -> "FinetuneSchedule":
        """Restore from :meth:`to_dict` output (version 1 states, from before the warm-up offset and failed
        rounds, restore with ``start_at`` 0 and no failures).

        Raises:
            CheckpointError: malformed state, or a state saved under another ``first_interval``.
        """
        if not isinstance(data, dict) or data.get("version") not in (1, 2):
            raise CheckpointError(f"schedule state {data!r}: expected a mapping with version 1 or 2")
        try:
            rnd, at, interval, first = (data[k] for k in ("round", "next_round_at", "interval", "first_interval"))
        except KeyError as exc:
            raise CheckpointError(f"schedule state {data!r} lacks {exc.args[0]!r}") from exc
        failed, start = data.get("failed", 0), data.get("start_at", 0)
        for key, v, low in (("round", rnd, 0), ("next_round_at", at, 1), ("interval", interval, 1),
                            ("failed", failed, 0), ("start_at", start, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise CheckpointError(f"schedule state {key}={v!r}; expected an integer >= {low}")
        if first != cfg.first_interval:
            raise CheckpointError(f"schedule state was saved with first_interval={first!r}; this run's config "
                                  f"has schedule.first_interval={cfg.first_interval}")
        sched = cls(cfg, start_at=start)
        sched.round, sched.failed, sched.next_round_at, sched.interval = rnd, failed, at, interval
        return sched
