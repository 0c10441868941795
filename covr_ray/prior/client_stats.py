"""The env side of the prior, in the run's metrics: each env runner reports its prior wrappers' counters.

:class:`PriorClientStatsCallback` (an RLlib callback, one per env runner) adds, after every ``sample()``,
what its :class:`~covr_ray.prior.client.PriorWrapper` instances counted since the last report (queries
sent, answered, timed out, errors, skipped while the service was busy or absent, steps, steps with a
prior, late priors) to the runner's metrics as lifetime sums. RLlib adds them up over the env runners, and
:func:`covr_ray.rl.algo.learner_metrics` hands them to the sink as ``prior_client/<counter>`` (run totals),
with ``prior_client/with_prior_frac`` = steps with a prior / steps. This is what tells a service that
answers well from env runners that cannot reach it.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from ray.rllib.callbacks.callbacks import RLlibCallback

from covr_ray.prior.client import PriorWrapper

#: the namespace of these counters in the env runners' metrics (and in the sink).
PREFIX = "prior_client/"


def prior_wrappers(env: Any, _depth: int = 0) -> Iterator[PriorWrapper]:
    """Every PriorWrapper inside an env runner's env: through wrappers (``.env``) and vector envs
    (``.envs``; gymnasium's vector wrappers do not forward attributes, so each layer is looked at)."""
    if env is None or _depth > 32:
        return
    if isinstance(env, PriorWrapper):
        yield env
        return
    for sub in getattr(env, "envs", None) or ():
        yield from prior_wrappers(sub, _depth + 1)
    yield from prior_wrappers(getattr(env, "env", None), _depth + 1)


class PriorClientStatsCallback(RLlibCallback):
    """Reports the env runner's prior-client counters after every sample (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._reported: dict[int, dict[str, float]] = {}

    def on_sample_end(self, *, env_runner: Any = None, metrics_logger: Optional[Any] = None,
                      samples: Any = None, **kwargs: Any) -> None:
        if env_runner is None or metrics_logger is None:
            return
        totals: dict[str, float] = {}
        for wrapper in prior_wrappers(getattr(env_runner, "env", None)):
            last = self._reported.setdefault(id(wrapper), {})
            for key, value in wrapper.prior_stats().items():
                name = key.split("/", 1)[1]
                if name in ("in_flight", "with_prior_frac"):
                    continue  # a level and a ratio, not counts: the ratio is recomputed from the sums
                totals[name] = totals.get(name, 0.0) + (value - last.get(name, 0.0))
                last[name] = value
        for name, delta in totals.items():
            metrics_logger.log_value(PREFIX + name, delta, reduce="lifetime_sum")
