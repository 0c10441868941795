"""A local Ray for the tests that need one: fresh, of a fixed size, in its own temp dir.

Its own temp dir under /tmp: no stale cluster file of another session is picked up, and the path stays short
(Ray's AF_UNIX socket paths must fit in 107 bytes). Most tests take the ``ray_session`` fixture of
conftest.py (one 2-CPU Ray per test module); a test that needs other ``ray.init`` arguments (a runtime env,
a namespace, one CPU) uses :func:`local_ray` itself.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def local_ray(num_cpus: int = 2, **init_kwargs: Any) -> Iterator[Any]:
    """``ray.init(num_cpus, own temp dir, no dashboard, no worker logs on the driver, **init_kwargs)``;
    yields the ``ray`` module, and shuts Ray down and removes the temp dir on the way out."""
    import ray

    if ray.is_initialized():  # a failed test before left one running: this one needs its own
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="covr_ray_", dir="/tmp")
    try:
        ray.init(num_cpus=num_cpus, _temp_dir=temp, include_dashboard=False, log_to_driver=False, **init_kwargs)
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
