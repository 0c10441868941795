"""Env side of the prior: a gymnasium wrapper that queries the prior service without ever blocking.

How to use (inside an RLlib env creator; ``worker_index`` spreads env runners over the replicas)::

    env = PriorWrapper.from_config(env, cfg, run_id=run_id, worker_index=ctx.worker_index,
                                   action_dim=spec.action_dim)

Contract (keys in :mod:`covr_ray.columns`), written into ``info`` by every ``step``:

- ``INFO_STEP_ID``: unique int64 id of this transition ``(o_t, a_t, r_t, o_t+1)``.
- ``INFO_PRIOR_ACTION`` / ``INFO_PRIOR_MASK`` / ``INFO_PRIOR_VERSION``: the prior valid for this very
  transition if it is already known, else zeros, mask 0.0 and version -1. Never a stale or made-up value.
- ``INFO_PRIOR_LATE``: ``[(step_id, action, version), ...]`` for priors that arrived since the previous
  call and belong to EARLIER transitions (the replay buffer attaches them by id; ``version`` is the
  adapter that answered, -1 = base model, so the replay can age them like on-time priors). With
  ``valid_frames = k`` a prior covers its query step and the next k-1 steps of the same episode.

``reset`` writes the same keys with ``INFO_STEP_ID = -1`` (no transition) and may carry late priors of the
previous episode.

Timing: the query for transition t is sent as soon as ``o_t`` exists (end of ``reset`` / of step t-1) on
every ``prior_every``-th step of an episode, with the single RGB frame ``env.render()`` returns. Each
``step`` polls with ``ray.wait(..., timeout=0)``, at most every ``prior.poll_every_s`` seconds. A query
older than ``timeout_s`` is dropped. Any Ray error (service died, restarting, refused the frame) turns the
query into "no prior"; after such an error the service is looked up again by name, at most every
``lookup_every_s`` seconds.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, SupportsFloat

import gymnasium as gym
import numpy as np

from covr_ray.columns import (
    INFO_PRIOR_ACTION,
    INFO_PRIOR_LATE,
    INFO_PRIOR_MASK,
    INFO_PRIOR_VERSION,
    INFO_STEP_ID,
)
from covr_ray.config import CovrConfig
from covr_ray.errors import ConfigError, EnvError
from covr_ray.log import get_logger
from covr_ray.prior.prompts import check_frame

log = get_logger(__name__)
NO_STEP = -1


@dataclass
class _InFlight:
    ref: Any
    sent: float
    episode: int
    step_ids: list[int]


@dataclass
class Arrival:
    """An answered query: the transitions it covers, its action (action_dim,) or None, its version."""

    episode: int
    step_ids: list[int]
    action: Optional[np.ndarray]
    version: int


class PriorClient:
    """Sends queries to the service actor and collects the answers that are ready, never blocking.

    At most ``max_in_flight`` queries are outstanding: while a service is slow or restarting, further
    query steps simply carry no prior instead of piling up a backlog it would answer too late.
    :meth:`poll` looks at most every ``poll_every_s`` seconds (``prior.poll_every_s``; 0 = at every call).
    """

    def __init__(self, *, service_name: Optional[str] = None, namespace: Optional[str] = None,
                 service: Any = None, timeout_s: float = 30.0, lookup_every_s: float = 5.0,
                 prompt: Optional[str] = None, max_in_flight: int = 4, poll_every_s: float = 0.0) -> None:
        if service is None and not service_name:
            raise ConfigError("prior.service_name", service_name, "an actor name or a handle")
        self.service_name = service_name
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.lookup_every_s = lookup_every_s
        self.prompt = prompt
        self.max_in_flight = max_in_flight
        self.poll_every_s = float(poll_every_s)
        self._last_poll = -float("inf")
        self._handle = service
        self._last_lookup = -float("inf")
        self._inflight: list[_InFlight] = []
        self.counts = {"sent": 0, "answered": 0, "no_action": 0, "timeouts": 0, "errors": 0, "lookups": 0,
                       "skipped_no_service": 0, "skipped_busy": 0}

    def _service(self) -> Any:
        if self._handle is not None or not self.service_name:
            return self._handle
        now = time.monotonic()
        if now - self._last_lookup < self.lookup_every_s:
            return None
        self._last_lookup = now
        import ray

        self.counts["lookups"] += 1
        try:
            self._handle = ray.get_actor(self.service_name, namespace=self.namespace)
        except ValueError:  # no such actor (yet, or any more)
            self._handle = None
        return self._handle

    def _lost_service(self) -> None:
        """After a Ray error: look the actor up by name again later (a restarted actor keeps its name)."""
        if self.service_name:
            self._handle = None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def send(self, frame: np.ndarray, episode: int, step_ids: list[int]) -> bool:
        """Ask for the prior of ``frame`` (H, W, 3) uint8 covering ``step_ids``; False if no service now."""
        from ray.exceptions import RayError

        if len(self._inflight) >= self.max_in_flight:  # a slow or restarting service gets no backlog
            self.counts["skipped_busy"] += 1
            return False
        handle = self._service()
        if handle is None:
            self.counts["skipped_no_service"] += 1
            return False
        try:
            ref = handle.query.remote(frame, self.prompt, sent_at=time.time())
        except RayError as exc:
            log.warning("prior query not sent: %s", exc)
            self.counts["errors"] += 1
            self._lost_service()
            return False
        self._inflight.append(_InFlight(ref, time.monotonic(), episode, list(step_ids)))
        self.counts["sent"] += 1
        return True

    def poll(self) -> list[Arrival]:
        """Answers ready now (``ray.wait`` with timeout 0); drops queries older than ``timeout_s``. Within
        ``poll_every_s`` of the previous look it returns nothing without looking."""
        if not self._inflight:
            return []
        now = time.monotonic()
        if now - self._last_poll < self.poll_every_s:
            return []
        self._last_poll = now
        import ray
        from ray.exceptions import RayError

        refs = [q.ref for q in self._inflight]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        ready_set = set(ready)
        now = time.monotonic()
        out: list[Arrival] = []
        keep: list[_InFlight] = []
        for q in self._inflight:
            if q.ref not in ready_set:
                if now - q.sent > self.timeout_s:
                    self.counts["timeouts"] += 1
                    try:
                        ray.cancel(q.ref)  # frees the service from answering it; the answer is not awaited
                    except (RayError, ValueError, TypeError) as exc:
                        log.debug("cancel of a timed-out prior query failed: %s", exc)
                else:
                    keep.append(q)
                continue
            try:
                answer = ray.get(q.ref, timeout=1.0)  # ready: returns at once
            except RayError as exc:
                self.counts["errors"] += 1
                log.debug("prior query failed (no prior for its steps): %s", exc)
                self._lost_service()
                out.append(Arrival(q.episode, q.step_ids, None, -1))
                continue
            self.counts["answered"] += 1
            action = answer.get("action")
            if action is None:
                self.counts["no_action"] += 1
                out.append(Arrival(q.episode, q.step_ids, None, int(answer.get("version", -1))))
            else:
                out.append(Arrival(q.episode, q.step_ids, np.asarray(action, dtype=np.float32),
                                   int(answer.get("version", -1))))
        self._inflight = keep
        return out


class PriorWrapper(gym.Wrapper):
    """Adds the prior columns to every step's info (see the module docstring); never blocks on the VLM.

    Args:
        env: the simulator; ``env.render()`` must return the (S, S, 3) uint8 frame the VLM sees, unless
            ``frame_fn`` is given.
        action_dim: size of the action (and prior) vector.
        prior_every: query on every ``prior_every``-th step of an episode (its first step included).
        valid_frames: steps a prior stays valid, its own included (1..prior_every).
        client: a :class:`PriorClient`; None disables querying (every step then carries mask 0).
        frame_fn: ``env -> (H, W, 3) uint8``; default ``env.render()``.
    """

    def __init__(self, env: gym.Env, *, action_dim: int, prior_every: int = 10, valid_frames: int = 1,
                 client: Optional[PriorClient] = None,
                 frame_fn: Optional[Callable[[gym.Env], np.ndarray]] = None) -> None:
        super().__init__(env)
        if isinstance(prior_every, bool) or not isinstance(prior_every, int) or prior_every < 1:
            raise ConfigError("prior.prior_every", prior_every, "an integer >= 1")
        if not isinstance(valid_frames, int) or not 1 <= valid_frames <= prior_every:
            raise ConfigError("prior.valid_frames", valid_frames, f"1..prior_every ({prior_every})")
        self.action_dim = int(action_dim)
        self.prior_every = prior_every
        self.valid_frames = valid_frames
        self.client = client
        self.frame_fn = frame_fn
        # Unique ids without coordination: a random 31-bit prefix per wrapper, a 32-bit counter below it.
        self._id_base = secrets.randbits(31) << 32
        self._counter = 0
        self._episode = -1
        self._t = 0  # index of the upcoming transition in the episode
        self._next_id = NO_STEP
        self._last_emitted = NO_STEP
        self._episode_open = False
        self._episode_end: dict[int, int] = {}  # episode -> id of its last transition
        self._known: dict[int, tuple[np.ndarray, int]] = {}  # future step id -> (action, version)
        self._late: list[tuple[int, list[float], int]] = []  # (step id, action, adapter version)
        self.counts = {"steps": 0, "with_prior": 0, "late": 0}

    @classmethod
    def from_config(cls, env: gym.Env, cfg: CovrConfig, *, run_id: str, worker_index: int, action_dim: int,
                    namespace: Optional[str] = None, frame_fn: Optional[Callable[[gym.Env], np.ndarray]] = None,
                    ) -> "PriorWrapper":
        """Wrapper querying replica ``worker_index % ray.prior_replicas`` of run ``run_id``'s service."""
        from covr_ray.prior.service import prior_actor_name

        client = None
        if cfg.prior.enabled:
            name = prior_actor_name(run_id, worker_index % cfg.ray.prior_replicas)
            client = PriorClient(service_name=name, namespace=namespace, timeout_s=cfg.prior.timeout_s,
                                 prompt=cfg.env.prompt, poll_every_s=cfg.prior.poll_every_s)
        return cls(env, action_dim=action_dim, prior_every=cfg.prior.prior_every,
                   valid_frames=cfg.prior.valid_frames, client=client, frame_fn=frame_fn)

    # -- ids and queries ------------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._counter += 1
        return self._id_base | self._counter

    def _frame(self) -> np.ndarray:
        frame = self.frame_fn(self.env) if self.frame_fn is not None else self.env.render()
        try:
            return check_frame(frame)
        except ValueError as exc:
            raise EnvError(f"{exc}; the prior needs env.render() to return the RGB frame (create the env with "
                           "render_mode='rgb_array') or a frame_fn") from exc

    def _open_transition(self) -> None:
        """o_t exists: give transition t its id and, on a query step, send o_t's frame to the VLM."""
        self._next_id = self._new_id()
        if self.client is not None and self._t % self.prior_every == 0:
            ids = [self._next_id + j for j in range(self.valid_frames)]  # ids are consecutive in an episode
            self.client.send(self._frame(), self._episode, ids)

    def _close_episode(self) -> None:
        if self._episode_open:
            self._episode_end[self._episode] = self._last_emitted
            self._episode_open = False
        self._known.clear()
        for old in [e for e in self._episode_end if e < self._episode - 8]:
            del self._episode_end[old]  # arrivals that old are long past timeout_s

    def _collect(self) -> None:
        """Sort arrived answers into priors for future steps of this episode and late ones for past steps."""
        if self.client is None:
            return
        for arrival in self.client.poll():
            if arrival.action is None:
                continue
            end = self._episode_end.get(arrival.episode)
            for sid in arrival.step_ids:
                if end is not None and sid > end:
                    break  # the episode ended before this step
                if sid <= self._last_emitted:
                    if end is not None or arrival.episode == self._episode:
                        self._late.append((sid, arrival.action.tolist(), arrival.version))
                        self.counts["late"] += 1
                elif arrival.episode == self._episode and self._episode_open:
                    self._known[sid] = (arrival.action, arrival.version)

    def _annotate(self, info: dict[str, Any], step_id: int) -> dict[str, Any]:
        info = dict(info)
        known = self._known.pop(step_id, None) if step_id != NO_STEP else None
        if known is not None:
            action, version = known
            info[INFO_PRIOR_ACTION] = action.tolist()
            info[INFO_PRIOR_MASK] = 1.0
            info[INFO_PRIOR_VERSION] = version
            self.counts["with_prior"] += 1
        else:
            info[INFO_PRIOR_ACTION] = [0.0] * self.action_dim
            info[INFO_PRIOR_MASK] = 0.0
            info[INFO_PRIOR_VERSION] = -1
        info[INFO_STEP_ID] = step_id
        info[INFO_PRIOR_LATE] = self._late
        self._late = []
        return info

    # -- gymnasium API --------------------------------------------------------------------------------

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
              ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._close_episode()
        self._episode += 1
        self._episode_open = True
        self._t = 0
        self._collect()
        self._open_transition()
        return obs, self._annotate(info, NO_STEP)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if not self._episode_open:
            raise EnvError("step() called before reset() or after the episode ended; call reset() first")
        obs, reward, terminated, truncated, info = self.env.step(action)
        step_id = self._next_id
        self._collect()  # before marking step_id emitted: an answer for it now is attached, not late
        self._last_emitted = step_id
        self.counts["steps"] += 1
        self._t += 1
        info = self._annotate(info, step_id)
        if terminated or truncated:
            self._close_episode()
        else:
            self._open_transition()
        return obs, reward, terminated, truncated, info

    def prior_stats(self) -> dict[str, float]:
        """Env-side figures with ``prior_client/`` keys (sent, answered, timeouts, errors, share with prior)."""
        out = {f"prior_client/{k}": float(v) for k, v in self.counts.items()}
        if self.client is not None:
            out.update({f"prior_client/{k}": float(v) for k, v in self.client.counts.items()})
            out["prior_client/in_flight"] = float(self.client.in_flight)
        out["prior_client/with_prior_frac"] = self.counts["with_prior"] / max(1, self.counts["steps"])
        return out
