"""Where a sweep's runs execute: ``covr train`` subprocesses on this machine (:class:`LocalBackend`) or Ray
jobs on a cluster (:class:`JobsBackend`). Both start a run (new, or ``--resume RUN_DIR``) or another
``covr`` command of a run (``launch``: the VLM evaluation step), poll it without blocking, and stop it;
every call that waits has a bound.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from covr_ray.errors import DependencyMissingError
from covr_ray.sweep.spec import RunPlan
from covr_ray.sweep.state import SweepError

T = TypeVar("T")
LOG_NAME = "sweep.log"
"""Each run's ``covr train`` output (local mode), appended attempt after attempt, in its run directory."""


def train_args(plan: RunPlan, resume: bool, address: Optional[str]) -> list[str]:
    """The ``covr train`` arguments of one run (after ``covr``): a new run of the plan's config, or
    ``--resume RUN_DIR`` (the run keeps the config saved in its directory)."""
    if resume:
        args = ["train", "--resume", str(plan.run_dir)]
    else:
        args = ["train", "--preset", plan.preset, "--run-dir", str(plan.run_dir), "--seed", str(plan.seed)]
        for text in plan.overrides:
            args += ["--set", text]
    if address:
        args += ["--address", address]
    return args + ["--no-progress", "--json"]


def exit_text(code: int) -> str:
    """``exit code 1``, ``signal SIGKILL``: a process's exit status (negative: the signal) in words."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class Handle:
    """A started (or attached) run."""

    pid: Optional[int] = None
    job_id: Optional[str] = None
    proc: Optional[subprocess.Popen] = None
    log: Any = None
    foreign: bool = False
    """A process this sweep did not start (found holding the run's lock): polled through the lock."""
    extra: dict[str, Any] = field(default_factory=dict)


def poll_or_stop(backend: Any, handle: Handle, run_dir: Path, overdue: bool) -> tuple[Optional[int], bool]:
    """One poll of a step (a run or its VLM evaluation) on ``backend``, shared by every step of a sweep.

    A step still going while ``overdue`` (its progress did not move for the sweep's stall timeout) is
    stopped and polled again, unless the sweep did not start it (``handle.foreign``). A step that ended is
    finished (``backend.finish``: its leftovers killed, its log closed).

    Returns:
        ``(exit code or None while it goes on, whether this call stopped it for stalling)``.
    """
    code = backend.poll(handle, run_dir)
    stalled = code is None and overdue
    if stalled and not handle.foreign:
        backend.stop(handle)
        code = backend.poll(handle, run_dir)
    if code is not None:
        backend.finish(handle)
    return code, stalled and code is not None


class LocalBackend:
    """``python -m covr_ray.cli train ...`` as a child process in a session of its own (so the sweep can
    stop it with everything it started, Ray included), its output appended to ``RUN_DIR/sweep.log``.

    Args:
        address: the Ray cluster each ``covr train`` joins (``--address``); None: each starts a local Ray.
        stop_timeout_s: how long a stopped run gets between SIGTERM and SIGKILL.
    """

    mode = "local"

    def __init__(self, address: Optional[str] = None, stop_timeout_s: float = 30.0) -> None:
        self.address = address
        self.stop_timeout_s = stop_timeout_s

    def start(self, plan: RunPlan, resume: bool, attempt: int) -> Handle:
        return self.launch(plan, train_args(plan, resume, self.address), attempt)

    def launch(self, plan: RunPlan, args: list[str], attempt: int, what: str = "train",
               num_gpus: float = 0.0) -> Handle:
        """``covr ARGS`` of ``plan``'s run (``what`` names it in the log; ``num_gpus`` is for jobs)."""
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(plan.run_dir / LOG_NAME, "ab")  # noqa: SIM115 - closed in finish()
        cmd = [sys.executable, "-m", "covr_ray.cli"] + args
        step = "" if what == "train" else f"{what} "
        log.write(f"\n=== covr sweep {step}attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{shlex.join(cmd)}\n".encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        return Handle(pid=proc.pid, proc=proc, log=log)

    def attach(self, pid: str) -> Handle:
        """A run some other process is running now (it holds the run's lock)."""
        return Handle(pid=int(pid) if pid.isdigit() else None, foreign=True)

    def poll(self, handle: Handle, run_dir: Path) -> Optional[int]:
        """None while the run goes on; else its exit code (a foreign run: 0, its state comes from the run
        directory)."""
        if handle.foreign:
            from covr_ray.run_dir import RunDir
            from covr_ray.sweep.state import lock_holder

            return None if lock_holder(RunDir(run_dir)) is not None else 0
        assert handle.proc is not None
        return handle.proc.poll()

    def stop(self, handle: Handle) -> None:
        """SIGTERM to the run's process group, SIGKILL after ``stop_timeout_s``; a foreign run is left alone."""
        if handle.foreign or handle.proc is None or handle.proc.poll() is not None:
            return
        _signal_group(handle.proc.pid, signal.SIGTERM)
        try:
            handle.proc.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(handle.proc.pid, signal.SIGKILL)
            handle.proc.wait(timeout=self.stop_timeout_s)

    def finish(self, handle: Handle) -> None:
        """After the run's process ended: kill what it left in its session (a local Ray's raylet and workers
        after a crash), close its log."""
        if handle.proc is not None:
            _signal_group(handle.proc.pid, signal.SIGKILL)
        if handle.log is not None:
            handle.log.close()
            handle.log = None

    def describe(self, handle: Handle) -> dict[str, Any]:
        return {"pid": handle.pid, "job_id": None}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` in a daemon thread, waited for at most ``timeout_s`` (the Ray job SDK's HTTP calls have no
    timeout of their own).

    Raises:
        SweepError: ``fn`` did not return in time, or raised (its error named).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"covr-sweep-{what}")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise SweepError(f"{what}: no answer from the Ray job server within {timeout_s:.0f} s")
    if "error" in box:
        raise SweepError(f"{what} failed: {type(box['error']).__name__}: {box['error']}") from box["error"]
    return box["value"]


class JobsBackend:
    """Each run as a Ray job (``ray job submit``, through ``ray.job_submission.JobSubmissionClient``):
    entrypoint ``covr train ... --address auto``, so the run joins the cluster the job runs on.

    The run directories are paths on the node that runs the job's entrypoint (the head node, unless the
    cluster says otherwise), and the sweep reads them for progress and for whether a run finished: run
    ``covr sweep`` where those paths are visible (on the head node, e.g. as a Ray job itself, or with
    ``--out`` on a filesystem the nodes share).

    Args:
        address: the job server, e.g. ``http://127.0.0.1:8265`` (None: ``RAY_ADDRESS`` or a local cluster).
        runtime_env: the jobs' runtime environment (``cluster/runtime_env.yaml``'s content).
        request_timeout_s: bound on every call to the job server.
    """

    mode = "jobs"
    _ENDED = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 2}

    def __init__(self, address: Optional[str], runtime_env: Optional[dict[str, Any]] = None,
                 request_timeout_s: float = 60.0, entrypoint: str = "covr") -> None:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:  # pragma: no cover - ray[default] is in the dev extra
            raise DependencyMissingError("ray[default]", "covr sweep --mode jobs", "dashboard") from exc
        self.address = address
        self.runtime_env = runtime_env
        self.timeout_s = request_timeout_s
        self.entrypoint = entrypoint
        self.client = call_with_timeout(lambda: JobSubmissionClient(address), request_timeout_s,
                                        f"connecting to the Ray job server at {address or 'RAY_ADDRESS'}")

    def start(self, plan: RunPlan, resume: bool, attempt: int) -> Handle:
        return self.launch(plan, train_args(plan, resume, "auto"), attempt)

    def launch(self, plan: RunPlan, args: list[str], attempt: int, what: str = "train",
               num_gpus: float = 0.0) -> Handle:
        """``covr ARGS`` of ``plan``'s run as a job; ``num_gpus`` > 0 reserves GPUs for its entrypoint (the
        VLM evaluation loads the model in the entrypoint's process; ``covr train`` asks Ray for its actors')."""
        entry = shlex.join([self.entrypoint] + args)
        step = "" if what == "train" else f"{what}-"
        submission_id = f"covr-sweep-{step}{plan.variant}-s{plan.seed}-a{attempt}-{uuid.uuid4().hex[:6]}"
        extra = {"entrypoint_num_gpus": num_gpus} if num_gpus > 0 else {}
        job_id = call_with_timeout(
            lambda: self.client.submit_job(entrypoint=entry, submission_id=submission_id,
                                           runtime_env=self.runtime_env, **extra,
                                           metadata={"covr_sweep_run": plan.rel, "attempt": str(attempt),
                                                     "step": what}),
            self.timeout_s, f"submitting {what} of {plan.rel}")
        return Handle(job_id=str(job_id))

    def attach(self, job_id: str) -> Optional[Handle]:
        """A job of an earlier sweep that is still pending or running, else None."""
        status = self.status(job_id)
        return Handle(job_id=job_id) if status in ("PENDING", "RUNNING") else None

    def status(self, job_id: str) -> Optional[str]:
        """The job's status name, or None for a job the server does not know."""
        try:
            status = call_with_timeout(lambda: self.client.get_job_status(job_id), self.timeout_s,
                                       f"status of job {job_id}")
        except SweepError as exc:
            if "does not exist" in str(exc) or "404" in str(exc):
                return None
            raise
        return str(getattr(status, "value", status))

    def poll(self, handle: Handle, run_dir: Path) -> Optional[int]:
        assert handle.job_id is not None
        status = self.status(handle.job_id)
        if status is None:
            return 3  # the server forgot the job (cluster restarted): its run directory decides
        return self._ENDED.get(status)

    def stop(self, handle: Handle) -> None:
        if handle.job_id is not None:
            call_with_timeout(lambda: self.client.stop_job(handle.job_id), self.timeout_s,
                              f"stopping job {handle.job_id}")

    def finish(self, handle: Handle) -> None:
        return None

    def describe(self, handle: Handle) -> dict[str, Any]:
        return {"pid": None, "job_id": handle.job_id}

    def logs_hint(self, handle: Handle) -> str:
        return f"ray job logs {handle.job_id}"
