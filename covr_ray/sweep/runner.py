"""Running a sweep: plan every run from its directory (skip the finished, resume the crashed, start the
missing), run them through a backend at most ``max_parallel`` at a time, print a progress line per change,
keep ``sweep.json`` current.

States of a run in the progress view and ``sweep.json``: ``pending`` (waiting for a slot), ``running``
(started new), ``resumed`` (continuing a crashed run), ``vlm-eval`` (finished; its VLM evaluation step,
spec ``vlm_eval``, is pending or running: :mod:`covr_ray.sweep.vlm_stage`), ``done`` (finished, see
:mod:`covr_ray.sweep.state`, and its VLM evaluation done, skipped or failed: the entry's ``vlm_eval``
says which), ``failed`` (ended without finishing: the next ``covr sweep`` resumes it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from covr_ray.errors import ConfigError, CovrError
from covr_ray.sweep.backends import LOG_NAME, Handle, exit_text, poll_or_stop
from covr_ray.sweep.spec import RunPlan, SweepSpec, SweepSpecError
from covr_ray.sweep.state import (SWEEP_FILE, MetricsTail, SweepError, read_sweep_file, run_status,
                                  write_sweep_file)
from covr_ray.sweep.vlm_stage import VLM_STATE, VLMEvalState, VLMStage, vlm_eval_args


@dataclass
class RunEntry:
    """One run of the sweep and what the sweep knows of it."""

    plan: RunPlan
    state: str = "pending"
    action: str = "new"
    """What this sweep does with it: ``new``, ``resume``, ``skip`` (finished), ``attach`` (running) or
    ``vlm-eval`` (finished, its VLM evaluation to run)."""
    attempts: int = 0
    """``covr train`` starts of this run, over every sweep invocation."""
    starts_here: int = 0
    """Starts in this invocation (``--retries`` counts against it)."""
    env_steps: Optional[int] = None
    total_env_steps: int = 0
    eval_return: Optional[float] = None
    pid: Optional[int] = None
    job_id: Optional[str] = None
    exit_code: Optional[int] = None
    message: str = ""
    vlm: Optional[VLMEvalState] = None
    """The VLM evaluation step (None: the spec has none, or the run has not finished yet)."""
    handle: Optional[Handle] = field(default=None, repr=False)
    tail: Optional[MetricsTail] = field(default=None, repr=False)
    last_progress: float = field(default_factory=time.monotonic, repr=False)
    last_printed: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.plan.variant, "seed": self.plan.seed, "run_dir": self.plan.rel, "state": self.state,
                "action": self.action, "attempts": self.attempts, "env_steps": self.env_steps,
                "total_env_steps": self.total_env_steps, "return": self.eval_return, "pid": self.pid,
                "job_id": self.job_id, "exit_code": self.exit_code, "message": self.message,
                "vlm_eval": self.vlm.to_dict() if self.vlm is not None else None}


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    from covr_ray.report.groups import active_fields, flatten_config

    return active_fields(flatten_config(data))


class Sweep:
    """One ``covr sweep`` invocation.

    Args:
        spec: the validated spec.
        out: output directory (``<out>/<variant>/s<seed>`` per run, ``<out>/sweep.json``).
        backend: :class:`~covr_ray.sweep.backends.LocalBackend` or :class:`~covr_ray.sweep.backends.JobsBackend`.
        max_parallel: runs at a time.
        retries: how often a run that fails is resumed again within this invocation.
        poll_s: seconds between polls of the running runs.
        progress_every_s: at most one env-steps line per run this often (state changes print at once).
        stall_timeout_s: a running run whose metrics.csv has not grown for this long is stopped and counts
            as failed (0: never).
        echo: where progress lines go (default: stdout, flushed).
        check_paths: run :func:`covr_ray.preflight.check_paths` on every new run's config before anything
            starts (local mode; a cluster's paths are not visible here).
    """

    def __init__(self, spec: SweepSpec, out: str | Path, backend: Any, max_parallel: int = 1, retries: int = 0,
                 poll_s: float = 2.0, progress_every_s: float = 30.0, stall_timeout_s: float = 3600.0,
                 echo: Optional[Callable[[str], None]] = None, check_paths: bool = True) -> None:
        for name, value, low in (("max_parallel", max_parallel, 1), ("retries", retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')}", value, f"an integer >= {low}")
        for name, value in (("poll_s", poll_s), ("stall_timeout_s", stall_timeout_s)):
            if not value >= 0:
                raise ConfigError(name, value, "a number of seconds >= 0")
        self.spec = spec
        self.out = Path(out).resolve()
        self.backend = backend
        self.max_parallel = max_parallel
        self.retries = retries
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.stall_timeout_s = stall_timeout_s
        self.echo = echo or (lambda line: print(line, flush=True))
        self.check_paths = check_paths
        self.entries: list[RunEntry] = []
        self.vlm_stage = VLMStage(spec.vlm_eval, backend, stall_timeout_s) if spec.vlm_eval is not None else None

    # --- planning: everything that can be wrong is found here, before any run starts --------------------

    def prepare(self) -> list[RunEntry]:
        """Inspect every run directory and decide each run's action.

        Raises:
            SweepSpecError: a run directory holds a run of another config than the spec gives it.
            SweepError: a run directory held by a process that is not a job of this sweep (jobs mode), an
                unreadable run directory or ``sweep.json``.
            ConfigError: a new run's paths fail :func:`covr_ray.preflight.check_paths`.
        """
        from covr_ray.preflight import check_paths

        previous = self._previous_entries()
        entries = []
        for plan in self.spec.plans(self.out):
            entry = RunEntry(plan=plan)
            try:
                expected = plan.config()
                status = run_status(plan.run_dir)
            except (CovrError, OSError) as exc:
                raise SweepError(f"{plan.run_dir}: {exc}") from exc
            entry.total_env_steps = int(expected.schedule.total_env_steps)
            entry.env_steps = status.env_steps or None
            if status.status != "missing":
                self._check_same_config(plan, expected)
            if status.status == "done":
                entry.state, entry.action = "done", "skip"
                try:
                    if self.vlm_stage is not None and self.vlm_stage.inspect(entry, previous.get(plan.rel)):
                        entry.action = VLM_STATE
                except (CovrError, OSError) as exc:
                    raise SweepError(f"{plan.run_dir}: {exc}") from exc
            elif status.status == "locked":
                entry.action = "attach"
                entry.handle = self._attach(plan, status.holder, previous.get(plan.rel, {}))
                entry.state = "running"
            else:
                entry.action = "resume" if status.status == "crashed" else "new"
                if self.check_paths and entry.action == "new":
                    check_paths(expected)
            entry.attempts = int(previous.get(plan.rel, {}).get("attempts", 0))
            entries.append(entry)
        if self.backend.mode == "jobs":  # jobs of an earlier sweep still queued or running: follow them
            for entry in entries:
                job_id = previous.get(entry.plan.rel, {}).get("job_id")
                if entry.action in ("new", "resume") and job_id:
                    handle = self.backend.attach(job_id)
                    if handle is not None:
                        entry.action, entry.state, entry.handle = "attach", "running", handle
                elif entry.action == VLM_STATE and self.vlm_stage is not None:
                    self.vlm_stage.follow(entry, previous.get(entry.plan.rel, {}))
        for entry in entries:
            if entry.handle is not None and entry.state != VLM_STATE:
                info = self.backend.describe(entry.handle)
                entry.pid, entry.job_id = info["pid"], info["job_id"]
                entry.tail = MetricsTail(entry.plan.run_dir / "metrics.csv")
        self.entries = entries
        return entries

    def _previous_entries(self) -> dict[str, dict[str, Any]]:
        path = self.out / SWEEP_FILE
        if not path.is_file():
            return {}
        return {e.get("run_dir"): e for e in read_sweep_file(path)["runs"] if isinstance(e, dict)}

    def _check_same_config(self, plan: RunPlan, expected: Any) -> None:
        from covr_ray.run_dir import RunDir

        have = _fields(RunDir(plan.run_dir).read_config().to_dict())
        want = _fields(expected.to_dict())
        diff = sorted(k for k in set(have) | set(want) if have.get(k, "<unset>") != want.get(k, "<unset>"))
        if diff:
            shown = ", ".join(f"{k}: {have.get(k, '<unset>')!r} there, {want.get(k, '<unset>')!r} in the spec"
                              for k in diff[:4])
            raise SweepSpecError(f"variants.{plan.variant}", list(self.spec.variants[plan.variant]),
                                 f"the config of the run already in {plan.run_dir}",
                                 f"it differs in {shown}{' ...' if len(diff) > 4 else ''}; use another --out, "
                                 "or delete that run directory to run it again", self.spec.path)

    def _attach(self, plan: RunPlan, holder: Optional[str], previous: dict[str, Any]) -> Handle:
        if self.backend.mode == "local":
            return self.backend.attach(holder or "")
        job_id = previous.get("job_id")
        handle = self.backend.attach(job_id) if job_id else None
        if handle is None:
            raise SweepError(f"{plan.run_dir} is being run by pid {holder}, not by a job of this sweep; wait for "
                             "it to end or stop it, then run the sweep again")
        return handle

    # --- running ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the sweep to the end; return ``{"runs": [...], "done", "failed", "sweep_file"}``.

        A KeyboardInterrupt (or SIGTERM turned into one by the CLI) stops the runs this sweep started,
        records them as failed (the next sweep resumes them) and is raised again.
        """
        if not self.entries:
            self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        counts = {a: sum(e.action == a for e in self.entries) for a in ("skip", "resume", "new", "attach", VLM_STATE)}
        vlm = f", {counts[VLM_STATE]} finished with a VLM evaluation to run" if self.vlm_stage is not None else ""
        self.echo(f"covr sweep: {len(self.entries)} runs of {self.spec.preset} in {self.out} ({self.backend.mode}): "
                  f"{counts['skip']} finished (skipped), {counts['resume']} to resume, {counts['new']} to start, "
                  f"{counts['attach']} running elsewhere (followed){vlm}")
        for entry in self.entries:
            self._print(entry, force=True)
        queue = [e for e in self.entries if e.action in ("new", "resume", VLM_STATE)]
        running = [e for e in self.entries if e.action == "attach"]
        self._save()
        try:
            while queue or running:
                while queue and len(running) < self.max_parallel:  # runs followed elsewhere count too
                    entry = queue.pop(0)
                    self._start(entry)
                    running.append(entry)
                time.sleep(self.poll_s)
                for entry in list(running):
                    if self._check(entry):
                        running.remove(entry)
                        if self._next_step(entry):
                            queue.append(entry)
                            self._print(entry, force=True)
        except BaseException:  # Ctrl-C, SIGTERM (via the CLI), a job server that stopped answering
            for entry in running:
                if entry.handle is None or entry.handle.foreign:
                    continue
                if entry.state == VLM_STATE and self.vlm_stage is not None:
                    self.vlm_stage.interrupt(entry)
                elif self.backend.mode == "jobs":  # the job goes on; the next `covr sweep` follows it
                    entry.message = f"left running as job {entry.job_id} (`ray job stop` stops it)"
                else:  # a child of this sweep: stopped with its Ray; the next `covr sweep` resumes it
                    self.backend.stop(entry.handle)
                    self.backend.finish(entry.handle)
                    entry.state, entry.message, entry.handle = "failed", "interrupted", None
                self._print(entry, force=True)
            self._save()
            raise
        done = [e for e in self.entries if e.state == "done"]
        failed = [e for e in self.entries if e.state != "done"]
        vlm_failed = [e for e in done if e.vlm is not None and e.vlm.state == "failed"]
        path = self._save()
        vlm = f", {len(vlm_failed)} VLM evaluations failed" if self.vlm_stage is not None else ""
        self.echo(f"covr sweep: {len(done)} of {len(self.entries)} runs done, {len(failed)} failed{vlm}; {path}")
        for entry in failed:
            where = entry.plan.run_dir / LOG_NAME if self.backend.mode == "local" else f"ray job logs {entry.job_id}"
            self.echo(f"  failed: {entry.plan.rel}: {entry.message} (log: {where}); `covr sweep` again resumes it")
        for entry in vlm_failed:
            assert self.vlm_stage is not None and entry.vlm is not None
            self.echo(f"  VLM evaluation failed: {entry.plan.rel}: {entry.vlm.message} (log: "
                      f"{self.vlm_stage.log_hint(entry)}); `covr sweep` again runs it (the run stays done)")
        return {"runs": [e.to_dict() for e in self.entries], "done": len(done), "failed": len(failed),
                "vlm_failed": len(vlm_failed), "sweep_file": str(path)}

    def _next_step(self, entry: RunEntry) -> bool:
        """After a step ended: True when the run is queued again (a retry, or its VLM evaluation next)."""
        if entry.state == "failed" and entry.starts_here <= self.retries:
            entry.action, entry.state = "resume", "pending"
            return True
        if entry.vlm is not None and entry.vlm.state == "failed" and self.vlm_stage is not None:
            return self.vlm_stage.retry(entry, self.retries)
        return entry.state == VLM_STATE  # the run finished: its VLM evaluation is next

    def _start(self, entry: RunEntry) -> None:
        if entry.state == VLM_STATE and self.vlm_stage is not None:
            self.vlm_stage.start(entry)
            self._print(entry, force=True)
            self._save()
            return
        resume = entry.action == "resume" or (entry.plan.run_dir / "config.yaml").is_file()
        entry.attempts += 1
        entry.starts_here += 1
        entry.handle = self.backend.start(entry.plan, resume=resume, attempt=entry.attempts)
        info = self.backend.describe(entry.handle)
        entry.pid, entry.job_id, entry.exit_code, entry.message = info["pid"], info["job_id"], None, ""
        entry.state = "resumed" if resume else "running"
        entry.tail = MetricsTail(entry.plan.run_dir / "metrics.csv")
        entry.last_progress = time.monotonic()
        self._print(entry, force=True)
        self._save()

    def _check(self, entry: RunEntry) -> bool:
        """Poll one running run; True when it has ended (its state then ``done`` or ``failed``)."""
        if entry.state == VLM_STATE and self.vlm_stage is not None:
            ended = self.vlm_stage.check(entry, on_progress=lambda: self._print(entry, force=True))
            if ended:
                self._print(entry, force=True)
                self._save()
            return ended
        assert entry.handle is not None and entry.tail is not None
        now = time.monotonic()
        if entry.tail.poll():
            entry.last_progress = now
            if entry.tail.env_steps is not None:
                entry.env_steps = entry.tail.env_steps
            if entry.tail.eval_return is not None:
                entry.eval_return = entry.tail.eval_return
            self._print(entry)
        overdue = self.stall_timeout_s > 0 and now - entry.last_progress > self.stall_timeout_s
        code, stalled = poll_or_stop(self.backend, entry.handle, entry.plan.run_dir, overdue)
        if code is None:
            return False
        entry.exit_code = code
        entry.tail.poll()
        if entry.tail.eval_return is not None:
            entry.eval_return = entry.tail.eval_return
        try:
            status = run_status(entry.plan.run_dir)
        except (CovrError, OSError) as exc:
            status = None
            entry.message = f"unreadable run directory: {exc}"
        if status is not None and status.status == "done":
            entry.state, entry.env_steps = "done", max(status.env_steps, entry.env_steps or 0)
            if self.vlm_stage is not None:
                self.vlm_stage.after_run(entry)  # state vlm-eval when its VLM evaluation is to run
        else:
            entry.state = "failed"
            if stalled:
                entry.message = f"stalled: metrics.csv did not grow for {self.stall_timeout_s:.0f} s; stopped"
            elif not entry.message:
                entry.message = (f"exited with {exit_text(code)} before finishing" if code
                                 else "ended without a final evaluation at total_env_steps")
                if self.backend.mode == "jobs" and status is not None and status.status == "missing":
                    entry.message += (f"; {entry.plan.run_dir} is not visible here: run `covr sweep` where the "
                                      "jobs' run directories are (the head node, or a shared filesystem)")
        entry.handle = None
        self._print(entry, force=True)
        self._save()
        return True

    # --- output ----------------------------------------------------------------------------------------

    def _line(self, entry: RunEntry) -> str:
        steps = "-" if entry.env_steps is None else str(entry.env_steps)
        pct = (f" ({100.0 * entry.env_steps / entry.total_env_steps:.0f}%)"
               if entry.env_steps is not None and entry.total_env_steps else "")
        ret = "-" if entry.eval_return is None else f"{entry.eval_return:.4g}"
        vlm = entry.vlm if entry.vlm is not None and entry.vlm.state == "running" else None
        pid, job = (vlm.pid, vlm.job_id) if vlm is not None else (entry.pid, entry.job_id)
        live = vlm is not None or entry.state in ("running", "resumed")
        where = (f", pid {pid}" if pid and live else "") + (f", job {job}" if job and live else "")
        msg = f" - {entry.message}" if entry.message else ""
        msg += entry.vlm.show() if entry.vlm is not None else ""  # its state, versions, failure
        vlm_of = [e.vlm.state for e in self.entries if e.vlm is not None]
        counts = {s: sum(e.state == s for e in self.entries) for s in ("done", "failed")}
        active = sum(e.state in ("running", "resumed") for e in self.entries) + vlm_of.count("running")
        return (f"[{time.strftime('%H:%M:%S')}] {entry.plan.variant} s{entry.plan.seed}: {entry.state:<7} "
                f"env steps {steps}/{entry.total_env_steps}{pct}, return {ret}{where}{msg}  "
                f"[{counts['done']}/{len(self.entries)} done, {active} running, {counts['failed']} failed"
                + (f", {vlm_of.count('failed')} VLM evaluations failed" if "failed" in vlm_of else "") + "]")

    def _print(self, entry: RunEntry, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - entry.last_printed >= self.progress_every_s:
            entry.last_printed = now
            self.echo(self._line(entry))

    def state(self) -> dict[str, Any]:
        """What ``sweep.json`` holds."""
        return {"spec": self.spec.to_dict(), "spec_file": str(self.spec.path) if self.spec.path else None,
                "out": str(self.out), "mode": self.backend.mode, "address": getattr(self.backend, "address", None),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": [e.to_dict() for e in self.entries]}

    def _save(self) -> Path:
        return write_sweep_file(self.out, self.state())


def print_plan(sweep: Sweep, stream: Any = None) -> None:
    """``--dry-run``: one line per run with what the sweep would do and the ``covr train`` it would run."""
    from covr_ray.sweep.backends import train_args

    stream = stream or sys.stdout
    vlm = sweep.spec.vlm_eval
    for entry in sweep.entries:
        if entry.action in ("new", "resume"):
            args = train_args(entry.plan, entry.action == "resume", getattr(sweep.backend, "address", None)
                              if sweep.backend.mode == "local" else "auto")
            what = "covr " + " ".join(args)
        elif entry.action == VLM_STATE and vlm is not None:
            what = "finished: covr " + " ".join(vlm_eval_args(entry.plan.run_dir, vlm))
        else:
            what = {"skip": "finished: skipped", "attach": "running elsewhere: followed"}[entry.action]
        print(f"{entry.plan.rel}: {entry.action}: {what}", file=stream)
        if (vlm is not None and entry.action in ("new", "resume", "attach") and entry.state != VLM_STATE
                and entry.plan.config().prior.enabled):
            print(f"{entry.plan.rel}: then {VLM_STATE} (when it has adapters): covr "
                  + " ".join(vlm_eval_args(entry.plan.run_dir, vlm)), file=stream)
