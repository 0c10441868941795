"""What a sweep knows about its runs, read from the run directories alone, and its ``sweep.json``.

A run's status (:func:`run_status`), from ``<out>/<variant>/s<seed>`` only:

- ``missing``: no ``config.yaml`` (never started, or it failed before ``covr train`` wrote its config);
- ``done``: finished. A run is finished when its newest complete checkpoint (``checkpoints/LATEST``) was
  taken at ``schedule.total_env_steps`` or later *and* an ``eval/eval-<steps>.json`` with ``steps`` at or
  past that total exists. ``CovrRun.run`` writes the final evaluation and then the final checkpoint, so
  both exist only once the run has ended normally; a run killed between the two is resumed and ends
  again (the final evaluation is redone at the same or later env steps);
- ``locked``: a live process holds the run's driver lock (``.lock``, ``flock``): ``covr train`` is running
  it now (a sweep started earlier, a job, a hand-made run);
- ``crashed``: anything else: it has a config but did not finish and nobody runs it (killed, preempted,
  out of memory, an error). ``covr train --resume RUN_DIR`` continues it from its newest checkpoint (from
  the beginning when it has none).

Progress (env steps, the newest eval return) comes from the run's ``metrics.csv``, read incrementally
(:class:`MetricsTail`).

``sweep.json`` (``<out>/sweep.json``, replaced atomically at every change) holds the spec and one entry per
run (variant, seed, run_dir relative to ``<out>``, state, attempts, env steps, return, pid or job id);
``covr report`` reads it (:func:`sweep_labels`) to label the runs' groups by variant.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from covr_ray.errors import CovrError
from covr_ray.io import atomic_write_text
from covr_ray.run_dir import RunDir, read_loop_state

SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = 1
STEPS_KEY = "loop/env_steps"
RETURN_KEY = "eval/return_mean"


class SweepError(CovrError):
    """A sweep cannot go on: an unreadable ``sweep.json``, a Ray job server that does not answer in time,
    a run directory held by another driver."""


@dataclass
class RunStatus:
    """A run directory's status (see the module docstring)."""

    status: str
    """``missing``, ``done``, ``locked`` or ``crashed``."""
    env_steps: int = 0
    """Env steps of the newest complete checkpoint (0 without one)."""
    holder: Optional[str] = None
    """``locked``: the pid the lock file names."""


def lock_holder(run: RunDir) -> Optional[str]:
    """The pid named in the run's lock file while a live process holds the lock, else None. Probes with a
    non-blocking shared ``flock`` on a read-only descriptor: nothing is written, and the probe cannot keep a
    driver from starting (it holds the lock for no longer than the call)."""
    try:
        fd = os.open(run.lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def final_eval_steps(run: RunDir, total_env_steps: int) -> Optional[int]:
    """Env steps of an evaluation at or past ``total_env_steps``, or None."""
    done = [steps for steps, _ in run.eval_results() if steps >= total_env_steps]
    return max(done) if done else None


def run_status(run_dir: str | Path) -> RunStatus:
    """The status of one run directory (see the module docstring).

    Raises:
        CheckpointError: ``config.yaml`` or ``checkpoints/LATEST`` exists but cannot be read.
        ConfigError: ``config.yaml`` is not a valid config.
    """
    run = RunDir(Path(run_dir))
    if not run.config_path.is_file():
        return RunStatus("missing")
    holder = lock_holder(run)
    latest = run.latest_checkpoint()
    steps = int(read_loop_state(latest)["env_steps"]) if latest is not None else 0
    if holder is not None:
        return RunStatus("locked", steps, holder)
    total = int(run.read_config().schedule.total_env_steps)
    if steps >= total and final_eval_steps(run, total) is not None:
        return RunStatus("done", steps)
    return RunStatus("crashed", steps)


class MetricsTail:
    """The newest ``loop/env_steps`` and ``eval/return_mean`` of a growing ``metrics.csv`` (long format
    ``step,key,value,time``), reading only what was appended since the last :meth:`poll`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.env_steps: Optional[int] = None
        self.eval_return: Optional[float] = None

    def poll(self) -> bool:
        """Read the new complete lines; True when env steps or the eval return changed."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size < self._offset:  # replaced or truncated: read it again
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = self._partial + fh.read(size - self._offset)
        self._offset = size
        *lines, self._partial = data.split(b"\n")
        before = (self.env_steps, self.eval_return)
        for line in lines:
            parts = line.decode(errors="replace").split(",")
            if len(parts) < 3 or parts[1] not in (STEPS_KEY, RETURN_KEY):
                continue
            try:
                value = float(parts[2])
            except ValueError:
                continue
            if parts[1] == STEPS_KEY:
                self.env_steps = int(value)
            else:
                self.eval_return = value
        return (self.env_steps, self.eval_return) != before


# --- sweep.json ------------------------------------------------------------------------------------------

def write_sweep_file(out: Path, data: dict[str, Any]) -> Path:
    """Write ``<out>/sweep.json`` atomically (a reader sees the old file or the new one)."""
    path = Path(out) / SWEEP_FILE
    atomic_write_text(path, json.dumps(dict(data, format=SWEEP_FORMAT), indent=2, sort_keys=True) + "\n")
    return path


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A ``sweep.json`` as a dict.

    Raises:
        SweepError: unreadable, not JSON, another format, or no ``runs`` list.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT or not isinstance(data.get("runs"), list):
        raise SweepError(f"{path} is not a sweep file of format {SWEEP_FORMAT} (written by `covr sweep`)")
    return data


@dataclass(frozen=True)
class SweepLabel:
    """How ``covr report`` labels a run made by a sweep."""

    variant: str
    base_variant: Optional[str]
    sweep: str
    """Path of the sweep file."""


def sweep_labels(path: Path) -> dict[Path, SweepLabel]:
    """Resolved run directory -> its :class:`SweepLabel`, for every run a ``sweep.json`` lists.

    Raises:
        SweepError: see :func:`read_sweep_file`; an entry without ``variant`` or ``run_dir``.
    """
    data = read_sweep_file(path)
    base = (data.get("spec") or {}).get("base_variant")
    out: dict[Path, SweepLabel] = {}
    for entry in data["runs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("variant"), str) \
                or not isinstance(entry.get("run_dir"), str):
            raise SweepError(f"{path}: a run entry lacks 'variant' or 'run_dir': {entry!r}")
        out[(Path(path).parent / entry["run_dir"]).resolve()] = SweepLabel(entry["variant"], base, str(path))
    return out


__all__ = ["MetricsTail", "RunStatus", "SWEEP_FILE", "SweepError", "SweepLabel",
           "final_eval_steps", "lock_holder", "read_sweep_file", "run_status", "sweep_labels", "write_sweep_file"]
