"""The run's Ray actors by name, and the removal of actors an earlier driver left behind.

Every actor of a run is named after the run's persisted id (:attr:`covr_ray.run_dir.RunDir.run_id`):
``covr-prior-<run_id>-<replica>`` for the prior service, ``covr-lora-<run_id>`` for the LoRA trainer. So a
resumed run finds its own actors' names again, and two runs on one cluster never collide.
"""

from __future__ import annotations

import time

from covr_ray.errors import PriorServiceError
from covr_ray.log import get_logger

log = get_logger(__name__)


def lora_actor_name(run_id: str) -> str:
    """Ray actor name of run ``run_id``'s LoRA trainer."""
    return f"covr-lora-{run_id}"


def run_actor_names(run_id: str, prior_replicas: int) -> list[str]:
    """Every named actor of a run: its prior replicas, then its LoRA trainer."""
    from covr_ray.prior.service import prior_actor_name

    return [prior_actor_name(run_id, r) for r in range(prior_replicas)] + [lora_actor_name(run_id)]


def remove_leftover_actors(names: list[str], wait_s: float = 60.0) -> list[str]:
    """Kill actors of these names that a killed driver left behind (on a cluster its Ray outlives it, and
    the GCS may hold the names for a moment); returns the names removed. Call it only while holding the
    run directory's lock, so that no live driver owns them.

    Raises:
        PriorServiceError: an actor did not go away within ``wait_s`` seconds.
    """
    import ray

    removed = []
    for name in names:
        try:
            handle = ray.get_actor(name)
        except ValueError:
            continue  # no such actor: the usual case
        log.warning("removing actor %s left by an earlier driver of this run", name)
        ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.5)
        else:
            raise PriorServiceError(f"actor {name} of an earlier driver of this run did not go away within "
                                    f"{wait_s:g} s; kill it (`ray kill` / the dashboard) and resume again")
        removed.append(name)
    return removed
