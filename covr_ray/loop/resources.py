"""Whether Ray can hold what a run asks, checked right after ``ray.init``, before any actor starts.

:func:`check_resources` compares the CPUs and GPUs the run's actors reserve with the connected cluster. On a
cluster that cannot grow an ask that cannot fit is a :class:`~covr_ray.errors.ConfigError` naming the
fields and the totals; on one an autoscaler may grow, a ``waiting for N CPUs (have M)`` line is logged
periodically until the cluster holds the asks (:class:`ResourceWatch`).

What a run reserves (Ray's accounting: an actor holds its ``num_cpus``/``num_gpus`` while it lives; the
driver process reserves nothing)::

    env runners   ray.num_env_runners x ray.num_cpus_per_env_runner CPUs
    prior         ray.prior_replicas x (ray.num_cpus_prior CPUs, ray.num_gpus_prior GPUs)  [prior.enabled]
    LoRA trainer  ray.num_cpus_lora CPUs, ray.num_gpus_lora GPUs                           [prior.enabled]
    learner       ray.num_gpus_learner GPUs (it runs in the driver: num_learners=0; counted against the
                  cluster's GPUs as before, no CPUs)

The driver itself (the learner's updates, RLlib's local env runner, the orchestrator) uses CPU time that
Ray does not account, so a run whose asks exactly fill a machine still shares that machine's cores with
its driver; that is allowed here (the ``smoke`` preset asks 1.5 of 2 CPUs).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from covr_ray.config import CovrConfig
from covr_ray.errors import ConfigError
from covr_ray.log import get_logger

log = get_logger(__name__)

#: Environment variable that overrides the autoscaler detection of :func:`cluster_can_grow`:
#: ``1``/``true``/``yes`` = the cluster may grow (short asks are waited for), ``0``/``false``/``no`` = it is
#: fixed (short asks are an error).
AUTOSCALING_ENV = "COVR_RAY_AUTOSCALING"

_EPS = 1e-9


@dataclass(frozen=True)
class Ask:
    """One kind of thing a run reserves: ``count`` actors, each holding ``cpus`` CPUs and ``gpus`` GPUs."""

    label: str
    """What it is (``env runners``)."""
    count_field: str
    """Config field of the count (``""`` when there is always one)."""
    count: int
    cpu_field: str
    """Config field of the CPUs per actor (``""``: reserves none)."""
    cpus: float
    gpu_field: str
    """Config field of the GPUs per actor (``""``: reserves none)."""
    gpus: float
    actor: bool = True
    """False for the learner, which runs in the driver (its share is counted, it is not scheduled)."""

    @property
    def total_cpus(self) -> float:
        return self.count * self.cpus

    @property
    def total_gpus(self) -> float:
        return self.count * self.gpus

    def main_field(self, kind: str) -> str:
        """The field to name for this ask's ``kind`` (``CPU``/``GPU``): the count when there are several."""
        per = self.cpu_field if kind == "CPU" else self.gpu_field
        return self.count_field if self.count_field and self.count > 1 else per

    def describe(self, kind: str) -> str:
        """``env runners 2 (ray.num_env_runners x ray.num_cpus_per_env_runner = 4 x 0.5)``, or
        ``LoRA trainer 0.5 (ray.num_cpus_lora)``."""
        per_field, per = (self.cpu_field, self.cpus) if kind == "CPU" else (self.gpu_field, self.gpus)
        if self.count_field:
            return f"{self.label} {self.count * per:g} ({self.count_field} x {per_field} = {self.count} x {per:g})"
        return f"{self.label} {per:g} ({per_field})"


def run_asks(cfg: CovrConfig) -> list[Ask]:
    """What the run reserves (see the module docstring); the prior and LoRA trainer only with the prior on."""
    r = cfg.ray
    asks = [Ask("env runners", "ray.num_env_runners", r.num_env_runners, "ray.num_cpus_per_env_runner",
                r.num_cpus_per_env_runner, "", 0.0),
            Ask("SAC learner (in the driver)", "", 1, "", 0.0, "ray.num_gpus_learner", r.num_gpus_learner,
                actor=False)]
    if cfg.prior.enabled:
        asks += [Ask("VLM prior replicas", "ray.prior_replicas", r.prior_replicas, "ray.num_cpus_prior",
                     r.num_cpus_prior, "ray.num_gpus_prior", r.num_gpus_prior),
                 Ask("LoRA trainer", "", 1, "ray.num_cpus_lora", r.num_cpus_lora, "ray.num_gpus_lora",
                     r.num_gpus_lora)]
    return asks


def totals(asks: Sequence[Ask]) -> dict[str, float]:
    """``{"CPU": ..., "GPU": ...}`` the asks add up to."""
    return {"CPU": sum(a.total_cpus for a in asks), "GPU": sum(a.total_gpus for a in asks)}


def breakdown(asks: Sequence[Ask], kind: str) -> str:
    """The asks of ``kind`` that are not zero, as ``label total (field x field = n x c) + ...``."""
    terms = [a.describe(kind) for a in asks if (a.total_cpus if kind == "CPU" else a.total_gpus) > 0]
    return " + ".join(terms) or "nothing"


def _plural(kind: str, n: float) -> str:
    return f"{n:g} {kind}" + ("" if n == 1 else "s")


def _short_error(asks: Sequence[Ask], kind: str, have: float, why: str) -> ConfigError:
    """The ConfigError for ``kind`` asks that add up to more than ``have``: names the largest contributor,
    the breakdown, both totals and what would fit."""
    total = totals(asks)[kind]
    size = (lambda a: a.total_cpus) if kind == "CPU" else (lambda a: a.total_gpus)
    biggest = max(asks, key=size)
    field = biggest.main_field(kind)
    value = biggest.count if field == biggest.count_field else (biggest.cpus if kind == "CPU" else biggest.gpus)
    allowed = (f"{kind} asks adding up to at most the {_plural(kind, have)} of this Ray cluster ({why}); "
               f"the run asks {_plural(kind, total)}: {breakdown(asks, kind)}")
    if kind == "CPU":
        rest = total - biggest.total_cpus
        room = have - rest
        fixes = []
        if biggest.count_field and biggest.cpus > 0 and room >= biggest.cpus:
            fixes.append(f"--set {biggest.count_field}={math.floor(room / biggest.cpus + _EPS)}")
        per_actor = math.floor(room / max(biggest.count, 1) * 100) / 100  # CPUs each could keep, 2 decimals
        if biggest.cpu_field and per_actor > 0:
            fixes.append(f"--set {biggest.cpu_field}={per_actor:g}")
        lead = "Either fits: " if len(fixes) > 1 else "This fits: "
        hint = (lead + " or ".join(fixes) + "; or " if fixes else "Lower these asks, or ") + \
            "join a larger cluster (--address). Ray would otherwise wait for the missing CPUs forever"
    else:
        hint = ("On a CPU machine: --set ray.num_gpus_learner=0 --set ray.num_gpus_prior=0 --set ray.num_gpus_lora=0; "
                "or join a cluster with more GPUs (--address)")
    return ConfigError(field, value, allowed, hint=hint)


def _node_misfit(asks: Sequence[Ask], nodes: Sequence[Mapping[str, float]]) -> Optional[ConfigError]:
    """The first actor whose own ask (CPUs and GPUs together: one actor lives on one node) no single node
    of ``nodes`` (their total resources) can hold, as a ConfigError; None when each fits somewhere."""
    for a in asks:
        if not a.actor or a.count == 0 or (a.cpus <= 0 and a.gpus <= 0):
            continue
        if any(n.get("CPU", 0.0) + _EPS >= a.cpus and n.get("GPU", 0.0) + _EPS >= a.gpus for n in nodes):
            continue
        gpu_nodes = [n for n in nodes if n.get("GPU", 0.0) + _EPS >= a.gpus]
        field, value = (a.cpu_field, a.cpus) if gpu_nodes else (a.gpu_field, a.gpus)
        shapes = ", ".join(f"{n.get('CPU', 0.0):g} CPU/{n.get('GPU', 0.0):g} GPU" for n in nodes[:8])
        return ConfigError(field, value, f"an ask one node can hold: each of the {a.label} needs "
                           f"{_plural('CPU', a.cpus)} and {_plural('GPU', a.gpus)} on one node, and no node has "
                           f"both (nodes: {shapes}{', ...' if len(nodes) > 8 else ''})",
                           hint="Lower the per-actor ask or add a node that can hold it")
    return None


def _truthy(text: str) -> Optional[bool]:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def node_groups_can_grow(groups: Sequence[Any]) -> bool:
    """Ray Data's rule over the GCS cluster config's node groups: one with resources whose ``max_count`` is
    -1 (unlimited) or above its ``min_count`` can grow."""
    return any(g.max_count == -1 or g.max_count > g.min_count for g in groups if g.resources and g.max_count != 0)


def status_shows_autoscaler(node_types: Sequence[str], pending: int) -> bool:
    """From the GCS cluster status: nodes being launched (``pending`` > 0), or a node that carries a node
    type name. ``ray up``, KubeRay and Ray's autoscaler name the nodes they launch; nodes of a local
    ``ray.init()`` or of a hand-made ``ray start`` cluster have none, and the status calls them
    ``node_<node id>``."""
    return pending > 0 or any(t and not t.startswith("node_") for t in node_types)


def cluster_can_grow() -> tuple[bool, str]:
    """Whether an autoscaler may add nodes to the connected cluster, and why it was decided so.

    The rule, first match wins:

    1. ``COVR_RAY_AUTOSCALING`` set to 1/0 (true/false, yes/no) decides.
    2. The cluster config in the GCS (which autoscalers that report one write; Ray Data reads the same):
       :func:`node_groups_can_grow`.
    3. The GCS cluster status (``ray.autoscaler.v2.sdk.get_cluster_status``, answered by the GCS whichever
       autoscaler version runs): :func:`status_shows_autoscaler`.
    4. Neither says so: the cluster is fixed (a local ``ray.init()``, ``ray start`` without an autoscaling
       config). If the probes fail (e.g. a ``ray://`` client cannot reach the GCS), the cluster is taken as
       able to grow, so that a wrong guess costs log lines, not a refused run.
    """
    forced = _truthy(os.environ.get(AUTOSCALING_ENV, ""))
    if forced is not None:
        return forced, f"{AUTOSCALING_ENV}={os.environ[AUTOSCALING_ENV]}"
    try:  # Ray internals: any failure means "cannot tell", never a failed run
        import ray
        from ray._private.state import state
        from ray.autoscaler.v2.sdk import get_cluster_status

        config = state.get_cluster_config()
        if config is not None and len(config.node_group_configs) > 0:
            grows = node_groups_can_grow(config.node_group_configs)
            return grows, ("the autoscaler's config has node groups that can grow" if grows
                           else "the autoscaler's config fixes every node group's size")
        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception as exc:  # noqa: BLE001 - private APIs: RPC, import and attribute errors alike
        return True, f"could not tell whether an autoscaler runs ({type(exc).__name__}: {exc})"
    nodes = status.active_nodes + status.idle_nodes + status.pending_nodes
    pending = len(status.pending_launches) + len(status.pending_nodes)
    if status_shows_autoscaler([n.ray_node_type_name for n in nodes], pending):
        return True, "the cluster's nodes were launched by an autoscaler"
    return False, "no autoscaler manages this cluster"


def _max_resources() -> Optional[dict[str, float]]:
    """The most resources the autoscaler's config allows (None when it reports no config)."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception as exc:  # noqa: BLE001 - private API, see cluster_can_grow
        log.debug("no cluster config: %s", exc)
        return None
    return {k: float(v) for k, v in found.items()} if found else None


def _cluster_totals() -> dict[str, float]:
    import ray

    have = ray.cluster_resources()
    return {"CPU": float(have.get("CPU", 0.0)), "GPU": float(have.get("GPU", 0.0))}


def waiting_line(need: Mapping[str, float], have: Mapping[str, float]) -> str:
    """``waiting for 3 CPUs (have 2)`` (and GPUs when short of them too)."""
    parts = [f"{_plural(k, need[k])} (have {have.get(k, 0.0):g})" for k in ("CPU", "GPU")
             if need.get(k, 0.0) > have.get(k, 0.0) + _EPS]
    return "waiting for " + ", ".join(parts)


class ResourceWatch:
    """Logs a ``waiting for N CPUs (have M)`` warning every ``every_s`` seconds (the first at once) while the
    cluster holds fewer resources than ``need``; the thread ends when it holds them (one info line), when
    ``give_up_s`` have passed (one last warning), on :meth:`stop`, or when Ray is shut down.

    It only watches and logs: the autoscaler grows the cluster for the run's actors, which are queued as
    soon as they are created.
    """

    def __init__(self, need: Mapping[str, float], detail: str, every_s: float = 30.0,
                 give_up_s: float = 600.0) -> None:
        self.need = dict(need)
        self.detail = detail
        self.every_s = every_s
        self.give_up_s = give_up_s
        self.fitted = False
        """True once the cluster held ``need``."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="covr-resource-watch", daemon=True)

    def start(self) -> "ResourceWatch":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching (idempotent) and wait up to ``timeout_s`` for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        from ray.exceptions import RaySystemError

        deadline = time.monotonic() + self.give_up_s
        while not self._stop.is_set():
            try:
                have = _cluster_totals()
            except (RaySystemError, RuntimeError, ConnectionError, OSError) as exc:
                log.debug("resource watch ends: %s", exc)
                return
            if all(have.get(k, 0.0) + _EPS >= v for k, v in self.need.items()):
                self.fitted = True
                log.info("the cluster now holds the run's asks: %s", _have_line(self.need, have))
                return
            if time.monotonic() >= deadline:
                log.warning("%s after %.0f s; no longer reporting. The run's actors stay queued until the "
                            "cluster grows (%s)", waiting_line(self.need, have), self.give_up_s, self.detail)
                return
            log.warning("%s: the autoscaler may add nodes; the run's actors start when it has (%s)",
                        waiting_line(self.need, have), self.detail)
            self._stop.wait(self.every_s)


def _have_line(need: Mapping[str, float], have: Mapping[str, float]) -> str:
    return ", ".join(f"{_plural(k, need[k])} of {have.get(k, 0.0):g}" for k in ("CPU", "GPU") if need.get(k, 0.0) > 0)


def check_resources(cfg: CovrConfig, *, log_every_s: float = 30.0) -> Optional[ResourceWatch]:
    """Compare what the run reserves (:func:`run_asks`) with the connected cluster, before any actor starts.

    On a cluster that cannot grow (:func:`cluster_can_grow`): CPU or GPU asks adding up to more than the
    cluster's totals, or one actor's ask no single node can hold, raise a ConfigError naming the largest
    contributing field, the breakdown and both totals. When the totals fit but other jobs hold part of
    them, one warning says the actors will wait. On a cluster that can grow: asks beyond the autoscaler's
    configured maximum (when it reports one) are an error; a shortfall otherwise starts a
    :class:`ResourceWatch` (returned; it ends by itself) that logs ``waiting for N CPUs (have M)`` every
    ``log_every_s`` seconds, for at most ``ray.get_timeout_s``.

    Call it after ``ray.init``. Returns the watch, or None when nothing is short.

    Raises:
        ConfigError: the asks cannot fit (see above).
    """
    import ray

    asks = run_asks(cfg)
    need = totals(asks)
    have = _cluster_totals()
    grows, why = cluster_can_grow()
    if not grows:
        for kind in ("CPU", "GPU"):
            if need[kind] > have[kind] + _EPS:
                raise _short_error(asks, kind, have[kind], why)
        nodes = [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]
        misfit = _node_misfit(asks, nodes)
        if misfit is not None:
            raise misfit
        free = ray.available_resources()
        busy = [f"{_plural(k, need[k])} but only {float(free.get(k, 0.0)):g} of {have[k]:g} are free"
                for k in ("CPU", "GPU") if need[k] > float(free.get(k, 0.0)) + _EPS]
        if busy:
            log.warning("the run asks %s now (other jobs, or actors an earlier driver left, hold the rest): its "
                        "actors wait until they are released", "; ".join(busy))
        return None
    limit = _max_resources()
    if limit is not None:
        for kind in ("CPU", "GPU"):
            if kind in limit and need[kind] > limit[kind] + _EPS:
                raise _short_error(asks, kind, limit[kind], f"its autoscaler grows it to at most that; {why}")
    if all(need[k] <= have[k] + _EPS for k in need):
        return None
    detail = "; ".join(f"{k}: {breakdown(asks, k)}" for k in ("CPU", "GPU") if need[k] > 0) + f"; {why}"
    return ResourceWatch(need, detail, every_s=log_every_s, give_up_s=cfg.ray.get_timeout_s).start()
