"""The sweep's optional VLM evaluation step (spec ``vlm_eval``): the VLM alone as the policy, per fine-tune
iteration, after each finished run.

Which runs get it: a run that is ``done`` (:mod:`covr_ray.sweep.state`) whose config has
``prior.enabled=true`` and whose ``adapters/`` holds at least one complete version
(:func:`covr_ray.lora.versions.adapter_versions`). Others are ``skipped`` (with the reason). The step is
``covr eval RUN_DIR --actor vlm --adapter all --episodes N [--every-frame] --json`` (:func:`vlm_eval_args`),
through the sweep's backend like a ``covr train`` run (local: a subprocess, its output appended to
``RUN_DIR/sweep.log``; jobs: a Ray job, asking for the run's ``ray.num_gpus_prior`` GPUs for its entrypoint)
and counting against ``--max-parallel``.

Complete, from the run directory alone (:func:`vlm_eval_status`): ``eval/vlm-v<N>.json`` exists for v0 (the
base model) and every complete adapter version, each a JSON object whose ``episodes`` is the spec's and
whose ``query_every`` is the requested cadence (1 with ``every_frame``, else the run's
``prior.prior_every``). A missing, unreadable or different result makes the step run again (for all
versions: ``--adapter all``; the files are replaced atomically).

States of the step (``sweep.json``: each run's ``vlm_eval.state``; null when the spec has no ``vlm_eval``):
``skipped``, ``pending``, ``running``, ``done``, ``failed``. While the step is pending or running the run's
own state is ``vlm-eval``; it is ``done`` once the step is done or skipped, and stays ``done`` when the step
fails (the training is finished: the next ``covr sweep`` runs only the evaluation again). A failed step is
retried within the invocation like a failed run (``--retries``). A running step whose result files have not
changed for ``--stall-timeout-s`` is stopped and counts as failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from covr_ray.errors import CovrError
from covr_ray.lora.versions import adapter_versions
from covr_ray.run_dir import RunDir
from covr_ray.sweep.backends import LOG_NAME, exit_text, poll_or_stop
from covr_ray.sweep.spec import VLMEvalSpec

if TYPE_CHECKING:  # pragma: no cover
    from covr_ray.sweep.runner import RunEntry

#: The run's state while its VLM evaluation is pending or running.
VLM_STATE = "vlm-eval"
#: Adapter version of the base model in result files (:data:`covr_ray.vlm.policy.BASE_ADAPTER`).
BASE_ADAPTER = 0


def vlm_eval_args(run_dir: str | Path, vlm: VLMEvalSpec) -> list[str]:
    """The ``covr eval`` arguments (after ``covr``) of one run's VLM evaluation."""
    args = ["eval", str(run_dir), "--actor", "vlm", "--adapter", "all", "--episodes", str(vlm.episodes)]
    return args + (["--every-frame"] if vlm.every_frame else []) + ["--json"]


@dataclass
class VLMEvalStatus:
    """What a run directory says about its VLM evaluation (see the module docstring)."""

    needed: bool
    """The run gets the step (prior enabled, adapters present)."""
    reason: str = ""
    """Why not, when not needed."""
    versions: list[int] = field(default_factory=list)
    """v0 and every complete adapter version."""
    missing: list[int] = field(default_factory=list)
    """Versions without a result of the requested episodes and cadence."""
    gpus: float = 0.0
    """The run's ``ray.num_gpus_prior``: what the VLM needs (jobs mode asks for it)."""

    @property
    def complete(self) -> bool:
        return self.needed and not self.missing


def _result_matches(path: Path, episodes: int, query_every: int) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("episodes") == episodes and data.get("query_every") == query_every


def vlm_eval_status(run_dir: str | Path, vlm: VLMEvalSpec) -> VLMEvalStatus:
    """The VLM evaluation status of a run directory (the run itself being done is the caller's check).

    Raises:
        CheckpointError: no readable ``config.yaml``. ConfigError: it is not a valid config.
    """
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    if not cfg.prior.enabled:
        return VLMEvalStatus(False, "prior.enabled=false")
    adapters = [v for v in adapter_versions(run.adapters) if v != BASE_ADAPTER]
    if not adapters:
        return VLMEvalStatus(False, f"no complete adapter version in {run.adapters}")
    every = 1 if vlm.every_frame else int(cfg.prior.prior_every)
    versions = [BASE_ADAPTER] + adapters
    missing = [v for v in versions if not _result_matches(run.vlm_eval_result(v), vlm.episodes, every)]
    return VLMEvalStatus(True, versions=versions, missing=missing, gpus=float(cfg.ray.num_gpus_prior))


@dataclass
class VLMEvalState:
    """One run's VLM evaluation step as the sweep knows it (``sweep.json``: the run's ``vlm_eval``)."""

    state: str = "pending"
    """``skipped``, ``pending``, ``running``, ``done`` or ``failed``."""
    attempts: int = 0
    """``covr eval`` starts over every sweep invocation."""
    starts_here: int = 0
    versions: list[int] = field(default_factory=list)
    written: int = 0
    """Versions with a complete result."""
    gpus: float = 0.0
    pid: Optional[int] = None
    job_id: Optional[str] = None
    exit_code: Optional[int] = None
    message: str = ""
    last_progress: float = field(default_factory=time.monotonic, repr=False)
    seen: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "attempts": self.attempts, "versions": list(self.versions),
                "written": self.written, "pid": self.pid, "job_id": self.job_id, "exit_code": self.exit_code,
                "message": self.message}

    def show(self) -> str:
        """The progress line's part: ``; VLM eval running, 1/3 versions`` (the reason when skipped, the error
        when failed)."""
        if self.state == "skipped":
            return f"; VLM eval skipped: {self.message}"
        failure = f" - {self.message}" if self.state == "failed" and self.message else ""
        return f"; VLM eval {self.state}, {self.written}/{len(self.versions)} versions{failure}"


class VLMStage:
    """The step for every run of one sweep: decide, start, poll, retry (see the module docstring).

    Args:
        spec: the spec's ``vlm_eval``.
        backend: the sweep's backend (its ``launch``, ``poll``, ``stop``, ``finish``, ``describe``).
        stall_timeout_s: stop a step whose result files did not change for this long (0: never).
    """

    def __init__(self, spec: VLMEvalSpec, backend: Any, stall_timeout_s: float) -> None:
        self.spec = spec
        self.backend = backend
        self.stall_timeout_s = stall_timeout_s

    def inspect(self, entry: "RunEntry", previous: Optional[dict[str, Any]] = None) -> bool:
        """After the run is done: set ``entry.vlm`` from its directory; True when the step must run (the
        run's state is then ``vlm-eval``). ``previous``: the run's ``sweep.json`` entry (attempts).

        Raises:
            CovrError: an unreadable config (see :func:`vlm_eval_status`).
        """
        status = vlm_eval_status(entry.plan.run_dir, self.spec)
        old = entry.vlm
        if old is None:
            before = (previous or {}).get("vlm_eval")
            attempts = int(before.get("attempts", 0)) if isinstance(before, dict) else 0
            old = VLMEvalState(attempts=attempts)
        old.versions, old.gpus = status.versions, status.gpus
        old.written = len(status.versions) - len(status.missing)
        entry.vlm = old
        if not status.needed:
            old.state, old.message = "skipped", status.reason
            return False
        if status.complete:
            old.state = "done"
            return False
        old.state, entry.state = "pending", VLM_STATE
        return True

    def after_run(self, entry: "RunEntry") -> None:
        """:meth:`inspect` for a run that just finished in this sweep; an unreadable run directory makes the
        step ``failed`` (the run stays done) instead of ending the sweep."""
        try:
            self.inspect(entry)
        except (CovrError, OSError) as exc:
            entry.vlm = VLMEvalState(state="failed", message=f"unreadable run directory: {exc}")

    def follow(self, entry: "RunEntry", previous: dict[str, Any]) -> None:
        """Jobs mode: follow the VLM evaluation job of an earlier sweep that is still queued or running."""
        vlm = entry.vlm
        before = previous.get("vlm_eval")
        job_id = before.get("job_id") if isinstance(before, dict) else None
        if vlm is None or vlm.state != "pending" or not job_id:
            return
        handle = self.backend.attach(job_id)
        if handle is not None:
            entry.action, entry.handle = "attach", handle
            vlm.state, vlm.job_id, vlm.last_progress = "running", job_id, time.monotonic()

    def start(self, entry: "RunEntry") -> None:
        vlm = entry.vlm
        assert vlm is not None
        vlm.attempts += 1
        vlm.starts_here += 1
        entry.handle = self.backend.launch(entry.plan, vlm_eval_args(entry.plan.run_dir, self.spec), vlm.attempts,
                                           what=VLM_STATE, num_gpus=vlm.gpus)
        info = self.backend.describe(entry.handle)
        vlm.pid, vlm.job_id, vlm.exit_code, vlm.message = info["pid"], info["job_id"], None, ""
        vlm.state, entry.state = "running", VLM_STATE
        vlm.last_progress, vlm.seen = time.monotonic(), self._seen(entry)

    def _seen(self, entry: "RunEntry") -> list[tuple[int, int]]:
        found = []
        for version, path in RunDir(entry.plan.run_dir).vlm_eval_results():
            try:
                found.append((version, path.stat().st_mtime_ns))
            except FileNotFoundError:
                continue
        return found

    def check(self, entry: "RunEntry", on_progress: Optional[Callable[[], None]] = None) -> bool:
        """Poll a running step; True when it ended (``entry.vlm.state`` then ``done`` or ``failed``, the
        run's state ``done``). ``on_progress`` is called when another version's result was written."""
        vlm = entry.vlm
        assert vlm is not None and entry.handle is not None
        now = time.monotonic()
        seen = self._seen(entry)
        if seen != vlm.seen:
            vlm.seen, vlm.last_progress = seen, now
            try:
                status = vlm_eval_status(entry.plan.run_dir, self.spec)
            except (CovrError, OSError):
                status = None  # read again when the step ends
            if status is not None and len(status.versions) - len(status.missing) != vlm.written:
                vlm.written = len(status.versions) - len(status.missing)
                if on_progress is not None:
                    on_progress()
        overdue = self.stall_timeout_s > 0 and now - vlm.last_progress > self.stall_timeout_s
        code, stalled = poll_or_stop(self.backend, entry.handle, entry.plan.run_dir, overdue)
        if code is None:
            return False
        entry.handle, vlm.exit_code, entry.state = None, code, "done"
        try:
            status = vlm_eval_status(entry.plan.run_dir, self.spec)
        except (CovrError, OSError) as exc:
            vlm.state, vlm.message = "failed", f"unreadable run directory: {exc}"
            return True
        vlm.versions, vlm.written = status.versions, len(status.versions) - len(status.missing)
        if not status.needed or status.complete:  # (not needed: its adapters went away meanwhile)
            vlm.state, vlm.message = ("done", "") if status.complete else ("skipped", status.reason)
            return True
        vlm.state = "failed"
        missing = ", ".join(f"v{v}" for v in status.missing)
        if stalled:
            vlm.message = f"stalled: no eval/vlm-v<N>.json written for {self.stall_timeout_s:.0f} s; stopped"
        else:
            vlm.message = (f"covr eval --actor vlm exited with {exit_text(code)}" if code
                           else "covr eval --actor vlm ended") + f"; results missing for {missing}"
        return True

    def retry(self, entry: "RunEntry", retries: int) -> bool:
        """After a failed step: True (and pending again) while ``--retries`` allows another start."""
        vlm = entry.vlm
        if vlm is None or vlm.state != "failed" or vlm.starts_here > retries:
            return False
        vlm.state, entry.state = "pending", VLM_STATE
        return True

    def interrupt(self, entry: "RunEntry") -> None:
        """The sweep is interrupted while this step runs: a local process is stopped (the step failed, the next
        sweep runs it again), a job is left running (the next sweep follows it)."""
        vlm = entry.vlm
        assert vlm is not None
        if entry.handle is None or entry.handle.foreign:
            return
        if self.backend.mode == "jobs":
            vlm.message = f"left running as job {vlm.job_id} (`ray job stop` stops it)"
            return
        self.backend.stop(entry.handle)
        self.backend.finish(entry.handle)
        entry.handle, entry.state = None, "done"
        vlm.state, vlm.message = "failed", "interrupted"

    def log_hint(self, entry: "RunEntry") -> str:
        vlm = entry.vlm
        return (str(entry.plan.run_dir / LOG_NAME) if self.backend.mode == "local"
                else f"ray job logs {vlm.job_id if vlm else None}")
