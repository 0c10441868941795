"""The loop's fine-tune rounds over time: synchronous, or asynchronous with the learner training meanwhile.

:class:`RoundDriver` is the orchestrator's one entry for rounds (:meth:`RoundDriver.step` after every
``algo.train()``). At a round point it builds the kept set on the driver (the learner's critic completes
D_f, EDDF + RALW: :func:`covr_ray.loop.finetune_round.prepare_round`), then

- ``schedule.async_rounds = true`` (default): submits the LoRA trainer actor's round and returns, keeping
  the ``ObjectRef``; ``algo.train()`` goes on (env steps, SAC updates). Every later step polls the ref
  (``ray.wait``, timeout 0). When it is ready the round is *collected*: the adapter is hot-swapped and the
  round's consequences applied, exactly those of a synchronous round. A round not ready
  ``ray.get_timeout_s`` seconds after its submission is cancelled and fails (the synchronous round's bound);
- ``schedule.async_rounds = false``: waits for the round (at most ``ray.get_timeout_s``), as before.

The consequences of a round (:meth:`RoundDriver._apply`): a completed round (a new adapter trained) deletes
the D_f shards its kept set was built from (``delete_consumed``; rows written since belong to the next
round), advances the schedule (``psi`` grows), re-ages the priors, and switches guidance on once
``cold_start_rounds`` rounds have completed; a failed one (the trainer erred, timed out, or its actor died
and was restarted by Ray; or it trained nothing) keeps D_f, does not count, and is retried one interval
after its point. The schedule only moves when a round is collected, so while a round is in flight its own
point stays due; when the *next* point arrives too, that round waits (a warning says so) and is prepared as
soon as the one in flight is collected: at most one round is in flight. With ``schedule.wait_at_next_round``
the loop itself waits there for the round in flight instead (bounded by its ``ray.get_timeout_s``; the wait
is in ``loop/learner_stall_s``), then starts the due round: rounds lag their points by at most one interval.

``loop/learner_stall_s`` per round: the wall time the loop spent on the round instead of ``algo.train()``:
building the kept set, submitting, collecting (hot swap included), and any blocking wait (the whole
training with ``async_rounds=false``; at the end of a run, the wait for a round still in flight).

Checkpoints: :meth:`RoundDriver.state` (the round in flight: its index, kept set, the D_f shards it
consumes, its submission step) goes into ``loop_state.json`` as ``round_in_flight``. A resumed run
(:meth:`RoundDriver.restore`) collects that round if a complete adapter version
(:func:`covr_ray.lora.versions.list_adapters`) records its kept set (the trainer finished before the stop),
and otherwise submits it again on the same kept set; a kept set that is gone fails the round (D_f kept).
A round that completed after the checkpoint (a stop between its adapter and the next checkpoint) is collected
from its adapter, and kept sets of rounds that never completed are set aside, so the run rebuilds them under
the same names (:meth:`RoundDriver.restore`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from covr_ray.df.shards import open_shard_set
from covr_ray.df.writer import delete_consumed
from covr_ray.errors import CheckpointError, LoRATrainerError, ShardError
from covr_ray.log import get_logger
from covr_ray.loop.finetune_round import RoundOutcome, finish_round, fine_tune_round, prepare_round
from covr_ray.loop.schedule import next_interval
from covr_ray.lora.actor import round_ready, round_result, submit_round
from covr_ray.lora.trainer import RoundResult
from covr_ray.lora.versions import adapter_meta, adapter_round_metrics, list_adapters
from covr_ray.rl.algo import q_values, set_prior_age_limit, set_prior_weight, state_values

log = get_logger(__name__)

#: Version of :meth:`RoundInFlight.to_state`'s mapping.
STATE_VERSION = 1


@dataclass
class RoundInFlight:
    """A submitted round whose result has not been collected yet."""

    round_index: int
    """``c``: the schedule's round when it was submitted."""
    kept_set: Path
    """The round's kept shard set (``RunDir.round_dir``)."""
    kept_rows: int
    """Rows of the kept set."""
    df_shards: list[Path]
    """The D_f shards the kept set was built from: deleted when the round completes."""
    submitted_at: int
    """Env steps at submission."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The kept set's metrics (``df/*``, ``round/*``, ``eddf/*``, ``ralw/*``), logged at submission."""
    stall_s: float = 0.0
    """Seconds the loop spent on this round so far."""
    resumed: bool = False
    """Submitted again by a resumed run (its first submission was recorded in a checkpoint)."""
    ref: Any = None
    """``ObjectRef`` of the trainer's call (None once restored from a checkpoint, until resubmitted)."""
    started: float = 0.0
    """``time.monotonic()`` at (re)submission; the round fails ``ray.get_timeout_s`` seconds later."""

    def to_state(self, root: Path) -> dict[str, Any]:
        """JSON-serialisable record (paths relative to the run directory ``root``)."""
        return {"version": STATE_VERSION, "round": self.round_index, "kept_set": _rel(self.kept_set, root),
                "kept_rows": self.kept_rows, "df_shards": [_rel(p, root) for p in self.df_shards],
                "submitted_at": self.submitted_at, "stall_s": self.stall_s}

    @classmethod
    def from_state(cls, data: Any, root: Path) -> "RoundInFlight":
        """Restore :meth:`to_state` output.

        Raises:
            CheckpointError: not such a record.
        """
        try:
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise TypeError(f"version {data.get('version') if isinstance(data, dict) else None!r}")
            record = cls(int(data["round"]), root / str(data["kept_set"]), int(data["kept_rows"]),
                         [root / str(p) for p in data["df_shards"]], int(data["submitted_at"]),
                         stall_s=float(data["stall_s"]), resumed=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"round_in_flight {data!r} in the checkpoint's loop state is not a round record "
                                  f"of version {STATE_VERSION} ({exc}); resume from an older checkpoint") from exc
        if record.round_index < 0 or record.submitted_at < 0:
            raise CheckpointError(f"round_in_flight {data!r}: negative round or submission step")
        return record


def _rel(path: Path, root: Path) -> str:
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _trained_kept_sets(adapter_dir: Path) -> Iterator[tuple[int, Path, Path]]:
    """``(version, adapter path, kept set it names)`` of every complete adapter version, newest first (versions
    without a readable ``covr_adapter.json`` naming a kept set are passed over)."""
    for version, path in reversed(list_adapters(adapter_dir)):
        kept = adapter_meta(path).get("kept_set")
        if kept:
            yield version, path, Path(str(kept))


def adapter_of_kept_set(adapter_dir: Path, kept_set: Path) -> Optional[tuple[int, Path]]:
    """The complete adapter version trained on ``kept_set`` (its ``covr_adapter.json`` names it), or None."""
    want = Path(kept_set).resolve()
    return next(((v, p) for v, p, kept in _trained_kept_sets(adapter_dir) if kept.resolve() == want), None)


def adapter_of_round(run_dir: Any, round_index: int) -> Optional[tuple[int, Path, Path]]:
    """The newest complete adapter version trained on a kept set of round ``round_index``
    (``rounds/round-<c>-step<steps>`` named in its ``covr_adapter.json``), as ``(version, adapter path, kept set
    path in this run directory)``; None when there is none. By name: a run directory moved since the adapter
    was written still finds its kept set."""
    prefix = f"round-{int(round_index):03d}-step"
    return next(((v, p, run_dir.rounds / kept.name) for v, p, kept in _trained_kept_sets(run_dir.adapters)
                 if kept.name.startswith(prefix)), None)


def _result_of_adapter(version: int, path: Path) -> RoundResult:
    """A round collected from its complete adapter at a resume: the metrics the round recorded with the
    adapter (its held-out fit, steps, loss; logged again in this timeline), the version it produced (``_apply``
    logs the serving version as ``lora/adapter_version`` and :func:`finish_round` this one as
    ``round/adapter_version``)."""
    return RoundResult(str(path), version, True, adapter_round_metrics(path))


class RoundDriver:
    """Rounds of one :class:`~covr_ray.loop.orchestrator.CovrRun` (see the module docstring). It reads the
    run's config, schedule, directories, actors, algorithm and entropy, and updates its schedule, adapter
    version, metrics and round history.
    """

    def __init__(self, run: Any) -> None:
        self.run = run
        self.in_flight: Optional[RoundInFlight] = None
        self._waiting_logged_for = -1

    @property
    def async_rounds(self) -> bool:
        return bool(self.run.cfg.schedule.async_rounds)

    # --- the loop's entry -------------------------------------------------------------------------------

    def step(self) -> bool:
        """Once per loop iteration: collect the round in flight if it ended, start a due round (at most one
        in flight). Returns True when a round was submitted or collected."""
        changed = False
        if self.in_flight is not None:
            changed = self._poll(wait=False)
        sched = self.run.schedule
        if self.in_flight is None and sched.due(self.run.env_steps):
            if self.async_rounds:
                self._submit()
            else:
                self._sync_round()
            return True
        if self.in_flight is not None:
            nxt = sched.next_round_at + next_interval(sched.interval, sched.round, sched.cfg.max_interval)
            if self.run.env_steps >= nxt and sched.cfg.wait_at_next_round:
                log.info("round %d is due at %d env steps and round %d (submitted at %d env steps) is still in "
                         "flight: the loop waits for it (schedule.wait_at_next_round)", sched.round + 1, nxt,
                         sched.round, self.in_flight.submitted_at)
                self._poll(wait=True)
                if self.in_flight is None and sched.due(self.run.env_steps):
                    self._submit()
                return True
            if self.run.env_steps >= nxt and self._waiting_logged_for != sched.round:
                self._waiting_logged_for = sched.round
                log.warning("round %d is due at %d env steps but round %d (submitted at %d env steps) is still in "
                            "flight: it waits, and starts when round %d is collected (at most one round in flight; "
                            "schedule.wait_at_next_round=true makes the loop wait instead)",
                            sched.round + 1, nxt, sched.round, self.in_flight.submitted_at, sched.round)
        return changed

    def finish(self) -> None:
        """End of the run: wait for the round in flight (within what is left of its ``ray.get_timeout_s``)."""
        if self.in_flight is not None:
            left = max(0.0, self.in_flight.started + self.run.timeout_s - time.monotonic())
            log.info("waiting up to %.0f s for round %d (in flight since %d env steps) before the final evaluation",
                     left, self.in_flight.round_index, self.in_flight.submitted_at)
            self._poll(wait=True)

    def state(self) -> Optional[dict[str, Any]]:
        """The round in flight for a checkpoint's loop state (None when none is)."""
        return None if self.in_flight is None else self.in_flight.to_state(self.run.run_dir.root)

    def restore(self, data: Optional[dict[str, Any]]) -> None:
        """Bring the rounds of a resumed run up to what its directory holds (called once, after the checkpoint
        is restored; ``data`` is the checkpoint's ``round_in_flight``, None when it recorded none):

        1. the round the checkpoint recorded in flight is collected when its adapter is complete, else
           submitted again on its kept set (a kept set that is gone fails the round);
        2. rounds that completed *after* the checkpoint (the run stopped between a round's adapter and the next
           checkpoint) are collected from their adapters, in order, as if they had just ended: the schedule
           advances, the D_f shards their kept sets record are consumed, and the prior service, which loaded
           the newest adapter when it started, is already serving them. Their work is kept, not redone;
        3. kept sets of the current round or later that no complete adapter was trained on (written after the
           checkpoint by a round the stop cut short, or left by a failed attempt) are set aside
           (:meth:`RunDir.set_aside_round_dirs`): the run builds those rounds again, under the same names.
        """
        self._restore_in_flight(data)
        run = self.run
        while self.in_flight is None:
            found = adapter_of_round(run.run_dir, run.schedule.round)
            if found is None:
                break
            version, path, kept_set = found
            c = run.schedule.round
            try:
                kept = open_shard_set(kept_set)
                rows, sources = kept.rows, list(kept.sources)
            except ShardError as exc:  # the adapter is complete: its round still counts; D_f stays
                log.warning("round %d's kept set is unreadable (%s): its D_f shards are not consumed", c, exc)
                rows, sources = 0, []
            log.info("round %d completed after the checkpoint (adapter v%d, kept set %s): collecting it", c,
                     version, kept_set.name)
            self.in_flight = RoundInFlight(c, kept_set, rows, sources, run.env_steps, resumed=True)
            self._collect(_result_of_adapter(version, path), 0.0)
        keep = self.in_flight.kept_set if self.in_flight is not None else None
        for moved in run.run_dir.set_aside_round_dirs(run.schedule.round, keep=keep):
            log.warning("kept set %s belongs to a round that has not completed (no adapter was trained on it): "
                        "set aside as %s; the round runs again", moved.name.split(".set-aside-")[0], moved.name)

    def _restore_in_flight(self, data: Optional[dict[str, Any]]) -> None:
        if data is None:
            return
        record = RoundInFlight.from_state(data, self.run.run_dir.root)
        if record.round_index != self.run.schedule.round:
            raise CheckpointError(f"the checkpoint records round {record.round_index} in flight but its schedule is "
                                  f"at round {self.run.schedule.round}; resume from an older checkpoint")
        self.in_flight = record
        done = adapter_of_kept_set(self.run.run_dir.adapters, record.kept_set)
        if done is not None:
            version, path = done
            log.info("round %d was in flight at the checkpoint and its adapter v%d is complete: collecting it",
                     record.round_index, version)
            self._collect(_result_of_adapter(version, path), 0.0)
            return
        try:
            record.kept_rows = open_shard_set(record.kept_set).rows
        except ShardError as exc:
            log.error("round %d was in flight at the checkpoint but its kept set is unusable (%s)",
                      record.round_index, exc)
            self._collect(LoRATrainerError(f"kept set {record.kept_set} of the resumed round: {exc}"), 0.0)
            return
        log.info("round %d was in flight at the checkpoint: submitting it again on %s", record.round_index,
                 record.kept_set)
        self._resubmit(record)
        if not self.async_rounds:
            self._poll(wait=True)

    def abandon(self) -> None:
        """The run closes with a round in flight: say what becomes of it."""
        if self.in_flight is not None:
            log.warning("round %d (submitted at %d env steps) is still in flight and is abandoned; a resume from a "
                        "checkpoint that recorded it runs it again", self.in_flight.round_index,
                        self.in_flight.submitted_at)
            self.in_flight = None

    # --- one round --------------------------------------------------------------------------------------

    def _prepare(self) -> tuple[Any, dict[str, float], list[Path]]:
        run = self.run
        c = run.schedule.round
        df_shards = run.run_dir.df_shards()
        kept, metrics = prepare_round(
            run.cfg, df_shards=df_shards, out_dir=run.run_dir.round_dir(c, run.env_steps), round_index=c,
            value_fn=lambda obs: state_values(run.algo, obs, run.timeout_s),
            q_fn=lambda obs, act: q_values(run.algo, obs, act, run.timeout_s),
            action_dim=run.env_spec.action_dim, entropy=run.entropy, initial_entropy=run.initial_entropy)
        return kept, metrics, df_shards

    def _submit(self) -> None:
        t0 = time.perf_counter()
        run = self.run
        kept, metrics, df_shards = self._prepare()
        record = RoundInFlight(run.schedule.round, Path(kept.path), kept.rows, df_shards, run.env_steps, metrics)
        self._resubmit(record)
        record.stall_s += time.perf_counter() - t0
        run.sink.log(metrics, step=run.env_steps)
        log.info("round %d submitted at %d env steps (%d kept rows); training goes on meanwhile", record.round_index,
                 run.env_steps, kept.rows)

    def _resubmit(self, record: RoundInFlight) -> None:
        record.ref = submit_round(self.run.lora, record.kept_set)
        record.started = time.monotonic()
        self.in_flight = record

    def _poll(self, wait: bool) -> bool:
        """Collect the round in flight if it ended (or, ``wait``, when it ends); a round past its
        ``ray.get_timeout_s`` is cancelled and fails. Returns True when it was collected."""
        record = self.in_flight
        assert record is not None
        left = record.started + self.run.timeout_s - time.monotonic()
        ready = round_ready(record.ref)
        if not (ready or wait or left <= 0):
            return False
        t0 = time.perf_counter()
        result: RoundResult | LoRATrainerError
        try:  # a round that ended returns at once; otherwise wait for what is left of its time limit
            result = round_result(record.ref, record.kept_set, limit_s=self.run.timeout_s,
                                  timeout_s=self.run.timeout_s if ready else max(left, 0.0))
        except LoRATrainerError as exc:
            result = exc
        self._collect(result, time.perf_counter() - t0)
        return True

    def _collect(self, result: "RoundResult | LoRATrainerError", waited_s: float) -> None:
        t0 = time.perf_counter()
        run, record = self.run, self.in_flight
        assert record is not None
        outcome = finish_round(result, df_shards=record.df_shards, round_index=record.round_index,
                               kept_rows=record.kept_rows, prior=run.prior, serving_version=run.adapter_version,
                               timeout_s=run.timeout_s)
        self.in_flight = None
        wall = time.monotonic() - record.started if record.ref is not None else 0.0
        outcome.metrics.update({"round/resumed": float(record.resumed),
                                "round/submitted_at": float(record.submitted_at),
                                "round/env_steps_during": float(run.env_steps - record.submitted_at),
                                "round/wall_s": wall})
        self._apply(outcome, record.round_index, record.stall_s + waited_s, t0, record.metrics,
                    after_checkpoint=record.resumed, kept_rows=record.kept_rows)

    def _sync_round(self) -> None:
        t0 = time.perf_counter()
        run = self.run
        c = run.schedule.round
        outcome = fine_tune_round(
            run.cfg, df_shards=run.run_dir.df_shards(), out_dir=run.run_dir.round_dir(c, run.env_steps),
            round_index=c, lora=run.lora, prior=run.prior,
            value_fn=lambda obs: state_values(run.algo, obs, run.timeout_s),
            q_fn=lambda obs, act: q_values(run.algo, obs, act, run.timeout_s), action_dim=run.env_spec.action_dim,
            entropy=run.entropy, initial_entropy=run.initial_entropy, timeout_s=run.timeout_s,
            serving_version=run.adapter_version)
        outcome.metrics.update({"round/resumed": 0.0, "round/submitted_at": float(run.env_steps),
                                "round/env_steps_during": 0.0, "round/wall_s": time.perf_counter() - t0})
        self._apply(outcome, c, 0.0, t0, {})

    def _apply(self, outcome: RoundOutcome, c: int, stall_s: float, t0: float, kept_metrics: dict[str, float],
               after_checkpoint: bool = False, kept_rows: int = 0) -> None:
        """A round's consequences (see the module docstring); ``stall_s`` + the time since ``t0`` is its
        ``loop/learner_stall_s``; ``after_checkpoint``: a round a resumed run finishes
        (:meth:`FinetuneSchedule.complete_round`); ``kept_rows``: its kept set's rows, for the log when the kept
        set's metrics were logged before the resume."""
        run = self.run
        cfg = run.cfg
        metrics = dict(outcome.metrics)
        if outcome.completed:  # D_f is cleared only now that its round has completed
            metrics["df/cleared_shards"] = float(delete_consumed(outcome.df_shards))
            metrics.update(run.schedule.complete_round(run.env_steps, after_checkpoint=after_checkpoint))
        else:
            metrics["df/cleared_shards"] = 0.0
            metrics.update(run.schedule.fail_round(run.env_steps))
        if outcome.version is not None:
            run.adapter_version = outcome.version
            set_prior_age_limit(run.algo, run.adapter_version, cfg.prior.max_age_versions)
        lam = set_prior_weight(run.algo, run.current_lambda(), timeout_s=run.timeout_s)
        metrics.update({"loop/lambda": lam, "lora/adapter_version": float(run.adapter_version),
                        "loop/learner_stall_s": stall_s + time.perf_counter() - t0})
        run.sink.log(metrics, step=run.env_steps)
        run.history.append({**kept_metrics, **metrics, "round": float(c), "env_steps": float(run.env_steps)})
        df_rows = metrics.get("round/df_rows", kept_metrics.get("round/df_rows"))
        data = (f"kept {int(metrics.get('round/kept_rows', kept_metrics.get('round/kept_rows', 0)))} of "
                f"{int(df_rows)} D_f rows" if df_rows is not None else
                f"{kept_rows} kept rows (its kept set was built before the resume)")
        own = int(metrics.get("round/adapter_version", run.adapter_version))  # a resume serves the newest already
        adapter = f"adapter v{own}" + (f" (serving v{run.adapter_version})" if own != run.adapter_version else "")
        log.info("round %d at %d env steps %s: %s, %s, lambda %.3g, learner stalled %.1f s", c, run.env_steps,
                 "completed" if outcome.completed else "did NOT complete (retried later)", data, adapter,
                 lam, metrics["loop/learner_stall_s"])
