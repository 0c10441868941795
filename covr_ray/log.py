"""Stdlib logging for the ``covr_ray`` logger tree (one format, set once per process), plus the few tools
that keep a run's log readable where it is read without a terminal (``ray job logs``, a file):

- :class:`RepeatFilter`: a library warning that repeats without news (vLLM logs one per batch on CPU, one
  per vision-tower module at start-up) passes once, marked; its repeats are counted and reported as one
  summary line (:meth:`RepeatFilter.flush`, or every ``summary_every_s``). Every other record passes.
- :func:`vllm_repeat_filter`: the process's filter for vLLM's log handler (:data:`VLLM_REPEATS`).
- :class:`ProgressLog`: one concise progress line every N seconds, where a tqdm bar would be one endless
  line of carriage returns.
- :func:`setup_worker_logging`: the ``covr_ray`` handler inside a Ray actor, so its INFO lines (adapter
  swaps, start-up) reach the driver's log.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import threading
import time
from typing import Callable, Iterable, Mapping, Optional, Union

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is emitted, not the stream it was made
    with: ``covr`` called in-process (tests, notebooks) must not leave a handler on a stream that a capture
    has since closed (a later record would then fail with "I/O operation on closed file")."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's own attribute
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ assigns it; the current one wins
        pass


def setup_logging(level: str = "INFO") -> logging.Logger:
    """Attach one stderr handler to the ``covr_ray`` logger (idempotent) and set its level."""
    logger = logging.getLogger("covr_ray")
    if not any(getattr(h, "_covr", False) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._covr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``covr_ray`` tree: ``get_logger(__name__)``."""
    return logging.getLogger(name if name.startswith("covr_ray") else f"covr_ray.{name}")


def in_ray_actor() -> bool:
    """True inside a Ray actor process (not the driver, not a plain test process)."""
    try:
        import ray

        return bool(ray.is_initialized()) and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray, or a Ray too old for the runtime context: not an actor
        return False


def setup_worker_logging(level: str = "INFO") -> Optional[logging.Logger]:
    """:func:`setup_logging` when running inside a Ray actor, else nothing.

    Ray forwards an actor's stderr to the driver (and ``ray job logs``), but without a handler the
    ``covr_ray`` tree prints only warnings there (Python's last-resort handler). Outside an actor nothing
    changes: the CLI has set logging up already, and tests keep propagation to pytest's ``caplog``.
    """
    return setup_logging(level) if in_ray_actor() else None


# --- collapsing repeated warnings -----------------------------------------------------------------------

_Patterns = Union[Iterable[str], Mapping[str, str]]


class RepeatFilter(logging.Filter):
    """Let the first record of each matching message through, count the repeats, summarise them.

    A record matches when one of ``patterns`` (regexes) is found in its message *template*
    (``record.msg`` before ``%`` formatting), so a warning logged once per module name (``"... %s will be
    ignored"``) is one message. Each message is keyed by logger name and template:

    - the first record passes, with ``note`` (or the pattern's own note, when ``patterns`` is a mapping
      ``{regex: note}``) appended, so the reader knows repeats are counted;
    - later ones are dropped and counted; with ``summary_every_s``, a repeat arriving that long after the
      last line of its message passes instead, with the number not shown since;
    - :meth:`flush` logs one summary line per message with repeats not yet reported.

    Records matching no pattern always pass: real warnings are never hidden. Thread-safe.
    """

    NOTE = "[covr: repeats of this message are counted, not shown]"

    def __init__(self, patterns: _Patterns, note: str = NOTE, summary_every_s: Optional[float] = None,
                 name: str = "") -> None:
        super().__init__(name)
        items = patterns.items() if isinstance(patterns, Mapping) else ((p, note) for p in patterns)
        self.patterns = [(re.compile(p), n) for p, n in items]
        self.summary_every_s = summary_every_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}  # key -> records seen in all
        self._pending: dict[tuple[str, str], int] = {}  # key -> repeats not reported yet
        self._last_line: dict[tuple[str, str], float] = {}  # key -> monotonic time of its last line
        self._level: dict[tuple[str, str], int] = {}  # key -> level of its records

    def _match(self, record: logging.LogRecord) -> Optional[tuple[tuple[str, str], str]]:
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        for pattern, note in self.patterns:
            if pattern.search(template):
                return (record.name, template), note
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        hit = self._match(record)
        if hit is None:
            return True
        key, note = hit
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key, 0) + 1
            self._seen[key] = seen
            if seen == 1:
                self._last_line[key] = now
                self._level[key] = record.levelno
                suffix = f" {note}" if note else ""
            elif (self.summary_every_s is not None and now - self._last_line[key] >= self.summary_every_s):
                pending = self._pending.pop(key, 0)
                self._last_line[key] = now
                suffix = f" [covr: {pending} repeats not shown since the last line of this message, {seen} in all]"
            else:
                self._pending[key] = self._pending.get(key, 0) + 1
                return False
        # The suffix is plain text after the template: ``%`` formatting of the args is unchanged.
        record.msg = f"{record.msg}{suffix.replace('%', '%%') if record.args else suffix}"
        return True

    def counts(self) -> dict[str, int]:
        """``{message template: records seen}`` of every matching message seen so far."""
        with self._lock:
            return {template: n for (_, template), n in self._seen.items()}

    def pending(self) -> dict[str, int]:
        """``{message template: repeats not reported yet}``."""
        with self._lock:
            return {template: n for (_, template), n in self._pending.items() if n}

    def _summary(self, reset: bool) -> list[tuple[int, str]]:
        with self._lock:
            lines = [(self._level[key], f"covr: {n} more of the {key[0]} message {_short(key[1])!r} not shown "
                                        f"({self._seen[key]} in all)")
                     for key, n in self._pending.items() if n]
            if reset:
                now = time.monotonic()
                for key, n in self._pending.items():
                    if n:
                        self._last_line[key] = now
                self._pending.clear()
        return lines

    def summary_lines(self, reset: bool = True) -> list[str]:
        """One line per message with unreported repeats (those are then reported, with ``reset``)."""
        return [line for _, line in self._summary(reset)]

    def flush(self, logger: Optional[logging.Logger] = None) -> list[str]:
        """Log :meth:`summary_lines` with ``logger`` (default ``covr_ray.log``), each at the level of the
        records it counts (a summary of warnings is a warning, shown wherever they were), and return them."""
        summary = self._summary(reset=True)
        target = logger or get_logger(__name__)
        for level, line in summary:
            target.log(level, "%s", line)
        return [line for _, line in summary]


def _short(template: str, limit: int = 110) -> str:
    return template if len(template) <= limit else template[: limit - 3] + "..."


#: vLLM warnings that repeat without news, ``{regex over the message template: note on its first line}``.
VLLM_REPEATS: dict[str, str] = {
    # vllm/v1/worker/cpu_worker.py: the CPU worker replaces torch.set_num_threads by this warning; with the
    # inline engine (one process) vLLM's own multimodal processor then calls it around every request
    # (vllm/renderers/base.py, set_default_torch_num_threads). The call is skipped, which is what we want.
    r"CPU backend doesn't allow to use `torch\.set_num_threads`":
        "[covr: vLLM's own multimodal processor calls this for every request in the inline CPU engine; "
        "the call is skipped, repeats are counted, not shown]",
    # vllm/lora/model_manager.py: one warning per vision-tower module of a VLM when tower LoRA is off
    # (enable_tower_connector_lora=False): COVR adapts the language model only (lora.target_modules).
    r"no matching PunicaWrapper is found; %s will be ignored":
        "[covr: vLLM serves LoRA on the language model only, the vision tower stays frozen; the same "
        "warning for the other vision-tower modules is counted, not shown]",
}

_vllm_filter: Optional[RepeatFilter] = None
_vllm_filter_lock = threading.Lock()


def vllm_repeat_filter() -> RepeatFilter:
    """The process's :class:`RepeatFilter` for vLLM's log handler (:data:`VLLM_REPEATS`, a summary line at
    most every 10 minutes and at exit).

    One instance per process, so a logging reconfiguration (vLLM applies its ``dictConfig`` again when an
    engine is made) keeps the counts. It is also the ``()`` factory named in the ``dictConfig`` that
    :func:`covr_ray.vlm.loader.vllm_env_defaults` hands to vLLM, which applies it in its engine and worker
    processes too.
    """
    global _vllm_filter
    with _vllm_filter_lock:
        if _vllm_filter is None:
            _vllm_filter = RepeatFilter(VLLM_REPEATS, summary_every_s=600.0)
            atexit.register(_flush_vllm_filter)
        return _vllm_filter


def _flush_vllm_filter() -> None:
    if _vllm_filter is not None:
        try:
            _vllm_filter.flush(logging.getLogger("vllm"))
        except Exception:  # noqa: BLE001 - at interpreter exit logging may be half torn down
            pass


# --- progress lines ---------------------------------------------------------------------------------------


class ProgressLog:
    """Log ``describe()`` every ``every_s`` seconds from a daemon thread, as a context manager.

    For logs read without a terminal (``ray job logs``, a file), where a tqdm bar is one ever-growing line
    of carriage returns. ``describe`` is called from the thread: it should only read plain attributes.
    A failing ``describe`` is logged once and the thread stops; the run goes on.
    """

    def __init__(self, describe: Callable[[], str], every_s: float,
                 logger: Optional[logging.Logger] = None) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.describe = describe
        self.every_s = float(every_s)
        self.logger = logger or get_logger("progress")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.logger.info("%s", self.describe())
            except Exception as exc:  # noqa: BLE001 - a progress line never stops a run
                self.logger.warning("progress lines stop: %r", exc)
                return

    def __enter__(self) -> "ProgressLog":
        self._thread = threading.Thread(target=self._loop, name="covr-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
