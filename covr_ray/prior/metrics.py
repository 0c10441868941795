"""Counters and rolling figures of the prior service, as a flat dict with ``prior/`` keys.

:class:`PriorStats` is updated by the service's batching loop and read by :meth:`PriorService.metrics`,
which the orchestrator hands to the project's metrics sink. The same figures are exported as Ray metrics
(``covr_prior_replica_*``, tagged with the replica; named apart from the driver's ``covr_prior_*`` gauges of the
run totals, so one Prometheus page never declares one name twice) so the Ray dashboard / Prometheus shows them live.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional

import numpy as np

from covr_ray.log import get_logger
from covr_ray.metrics import RUN_TAG

log = get_logger(__name__)

#: Queries whose latency and arrival time are kept for the rolling figures.
WINDOW = 4096
#: Seconds over which ``prior/qps`` is measured.
QPS_WINDOW_S = 30.0


def _in_ray() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


class _RayMetrics:
    """Ray metrics of one replica (created only inside a Ray worker or driver)."""

    def __init__(self, replica: str, run: str) -> None:
        from ray.util import metrics

        tags = {"replica": replica, RUN_TAG: run}
        keys = ("replica", RUN_TAG)
        self.queries = metrics.Counter("covr_prior_replica_queries", "Prior queries answered", tag_keys=keys)
        self.parse_failures = metrics.Counter("covr_prior_replica_parse_failures",
                                              "Answers that did not parse into an action", tag_keys=keys)
        self.timeouts = metrics.Counter("covr_prior_replica_timeouts", "Queries dropped after timeout_s", tag_keys=keys)
        self.latency = metrics.Histogram("covr_prior_replica_latency_ms", "Query latency, enqueue to answer (ms)",
                                         boundaries=[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
                                         tag_keys=keys)
        self.batch = metrics.Histogram("covr_prior_replica_batch_size", "Requests per engine call",
                                       boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=keys)
        self.version = metrics.Gauge("covr_prior_replica_adapter_version", "Serving adapter version (-1 = base)",
                                     tag_keys=keys)
        for m in (self.queries, self.parse_failures, self.timeouts, self.latency, self.batch, self.version):
            m.set_default_tags(tags)


class PriorStats:
    """Service counters plus rolling latency / batch-size / throughput windows."""

    def __init__(self, replica: str = "0", ray_metrics: bool = True, run: str = "") -> None:
        self.queries = 0
        self.answered = 0
        self.parse_failures = 0
        self.timeouts = 0
        self.engine_errors = 0
        self.batches = 0
        self.adapter_version = -1
        self.adapter_loads = 0
        self.adapter_load_failures = 0
        self.last_swap_s: Optional[float] = None
        self._latency_ms: deque[float] = deque(maxlen=WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=WINDOW)
        self._done_at: deque[float] = deque(maxlen=WINDOW)
        self._ray: Optional[_RayMetrics] = None
        if ray_metrics and _in_ray():
            try:
                self._ray = _RayMetrics(replica, run)
            except (RuntimeError, ValueError) as exc:  # metrics unavailable: dict figures only
                self._ray = None
                log.warning("Ray metrics of the prior service disabled: %s", exc)

    @property
    def exports_ray_metrics(self) -> bool:
        """True when the ``covr_prior_*`` Ray metrics exist (inside a Ray worker)."""
        return self._ray is not None

    def batch(self, size: int) -> None:
        """One engine call answered ``size`` requests."""
        self.batches += 1
        self._batch_sizes.append(size)
        if self._ray:
            self._ray.batch.observe(size)

    def answer(self, latency_ms: float, parsed: bool) -> None:
        """One request answered after ``latency_ms``; ``parsed`` False counts a parse failure."""
        self.queries += 1
        self.answered += 1
        self._latency_ms.append(latency_ms)
        self._done_at.append(time.monotonic())
        if not parsed:
            self.parse_failures += 1
        if self._ray:
            self._ray.queries.inc()
            self._ray.latency.observe(latency_ms)
            if not parsed:
                self._ray.parse_failures.inc()

    def timeout(self) -> None:
        """A request waited longer than timeout_s and was dropped unanswered."""
        self.queries += 1
        self.timeouts += 1
        if self._ray:
            self._ray.timeouts.inc()

    def engine_error(self, n: int) -> None:
        """An engine call failed; its ``n`` requests got no prior."""
        self.queries += n
        self.engine_errors += n

    def adapter(self, version: int, load_s: Optional[float] = None, failed: bool = False) -> None:
        """An adapter load finished (or failed); ``version`` is the serving version afterwards."""
        if failed:
            self.adapter_load_failures += 1
        else:
            self.adapter_loads += 1
            self.last_swap_s = load_s
        self.adapter_version = version
        if self._ray:
            self._ray.version.set(version)

    def as_dict(self) -> dict[str, Any]:
        """Figures with namespaced keys (``prior/latency_p95_ms``, ...)."""
        now = time.monotonic()
        recent = [t for t in self._done_at if now - t <= QPS_WINDOW_S]
        span = (now - recent[0]) if len(recent) > 1 else 0.0
        lat = np.asarray(self._latency_ms, dtype=np.float64)
        sizes = np.asarray(self._batch_sizes, dtype=np.float64)
        return {
            "prior/queries_total": self.queries,
            "prior/answered_total": self.answered,
            "prior/qps": (len(recent) - 1) / span if span > 0 else 0.0,
            "prior/batches_total": self.batches,
            "prior/batch_size_mean": float(sizes.mean()) if sizes.size else 0.0,
            "prior/batch_size_max": int(sizes.max()) if sizes.size else 0,
            "prior/latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
            "prior/latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else 0.0,
            "prior/parse_failures_total": self.parse_failures,
            "prior/parse_failure_rate": self.parse_failures / self.answered if self.answered else 0.0,
            "prior/timeouts_total": self.timeouts,
            "prior/engine_errors_total": self.engine_errors,
            "prior/adapter_version": self.adapter_version,
            "prior/adapter_loads_total": self.adapter_loads,
            "prior/adapter_load_failures_total": self.adapter_load_failures,
            "prior/last_swap_s": self.last_swap_s if self.last_swap_s is not None else float("nan"),
        }


#: how each ``prior/*`` figure of several replicas combines into the run's figure.
_SUMMED = ("prior/queries_total", "prior/answered_total", "prior/qps", "prior/batches_total",
           "prior/parse_failures_total", "prior/timeouts_total", "prior/engine_errors_total",
           "prior/adapter_loads_total", "prior/adapter_load_failures_total", "prior/queue_length")
_WORST = ("prior/batch_size_max", "prior/latency_p50_ms", "prior/latency_p95_ms", "prior/last_swap_s",
          "prior/engine_start_s")


def aggregate_replicas(stats: list[dict[str, Any]]) -> dict[str, float]:
    """One set of ``prior/*`` figures for the run from each replica's :meth:`PriorStats.as_dict` (plus the
    service's extras): counts and rates summed, latencies and sizes the worst replica's, the parse-failure
    rate and mean batch size recomputed over all replicas, ``prior/adapter_version`` the *oldest* version
    serving (a replica that refused a swap shows), and ``prior/replicas`` = how many answered.
    Non-numeric entries are dropped."""
    numeric = [{k: float(v) for k, v in s.items() if k.startswith("prior/") and isinstance(v, (int, float))
                and not isinstance(v, bool)} for s in stats]
    if not numeric:
        return {"prior/replicas": 0.0}
    out: dict[str, float] = {"prior/replicas": float(len(numeric))}
    keys = set().union(*numeric)
    for key in keys:
        values = [s[key] for s in numeric if key in s]
        if key in _SUMMED:
            out[key] = float(sum(values))
        elif key in _WORST:
            finite = [v for v in values if v == v]
            out[key] = max(finite) if finite else float("nan")
        elif key == "prior/adapter_version":
            out[key] = min(values)
        else:
            out[key] = values[0] if len(values) == 1 else float(sum(values) / len(values))
    answered = out.get("prior/answered_total", 0.0)
    if "prior/parse_failures_total" in out:
        out["prior/parse_failure_rate"] = out["prior/parse_failures_total"] / answered if answered else 0.0
    if "prior/batches_total" in out and out["prior/batches_total"] and "prior/batch_size_mean" in out:
        weights = [s.get("prior/batches_total", 0.0) for s in numeric]
        sizes = [s.get("prior/batch_size_mean", 0.0) for s in numeric]
        out["prior/batch_size_mean"] = sum(w * b for w, b in zip(weights, sizes)) / sum(weights)
    return out
