"""Latency of a loaded policy: single-observation calls timed one by one after a warm-up."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from covr_deploy.errors import DeployError


def measure_latency(act: Callable[[np.ndarray], Any], obs: np.ndarray, calls: int = 1000,
                    warmup: int = 50) -> dict[str, float]:
    """Time ``calls`` calls of ``act(obs)`` after ``warmup`` untimed ones.

    Returns:
        ``{"p50_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "calls"}`` (milliseconds per call, each
        call timed alone with ``time.perf_counter_ns``).
    """
    if calls < 1 or warmup < 0:
        raise DeployError(f"calls {calls} must be >= 1 and warmup {warmup} >= 0")
    for _ in range(warmup):
        act(obs)
    times = np.empty(calls, dtype=np.float64)
    for i in range(calls):
        start = time.perf_counter_ns()
        act(obs)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "max_ms": float(times.max()),
            "calls": int(calls)}
