"""The one metrics sink: W&B (offline unless a key is configured), TensorBoard, CSV and Ray gauges.

Every part of the system returns metric dicts with namespaced keys (``learner/critic_loss``,
``prior/latency_ms``, ``eddf/keep_frac``, ``lora/adapter_version``); only the orchestrator's
:class:`MetricsSink` writes them. A key without a namespace is a :class:`~covr_ray.errors.MetricsError`.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from covr_ray.config import LoggingSection
from covr_ray.errors import MetricsError
from covr_ray.log import get_logger
from covr_ray.run_dir import RunDir

log = get_logger(__name__)

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)+$")


def check_key(key: str) -> str:
    """Return ``key`` if it is ``namespace/name[/...]``; raise MetricsError naming it otherwise."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise MetricsError(f"metric key {key!r} is not namespaced: use 'namespace/name' with a lowercase "
                           f"namespace, e.g. 'learner/critic_loss'")
    return key


def namespaced(namespace: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"loss": 1}`` -> ``{"<namespace>/loss": 1}`` (keys already namespaced are kept)."""
    return {k if "/" in k else f"{namespace}/{k}": v for k, v in metrics.items()}


def wandb_mode(cfg: LoggingSection) -> str:
    """Resolve ``auto``: online when a W&B key is configured (WANDB_API_KEY), offline otherwise."""
    if cfg.wandb_mode != "auto":
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


#: The label of every ``covr_*`` Ray metric naming its run (the sink's gauges and the prior service's
#: metrics): several runs on one Ray cluster (a sweep of Ray jobs) are told apart by it.
RUN_TAG = "run"


def ray_metric_name(key: str) -> str:
    """``learner/critic_loss`` -> ``covr_learner_critic_loss`` (Prometheus-safe)."""
    return "covr_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class MetricsSink:
    """Writes namespaced scalar metrics to every enabled backend.

    Args:
        run_dir: the run directory; CSV goes to :attr:`RunDir.metrics_csv` (long format: step, key, value,
            wall time), TensorBoard files to :attr:`RunDir.tensorboard`, W&B files to :attr:`RunDir.wandb`.
        cfg: which backends are on.
        run_name: name shown in W&B.
        config: the resolved run config, stored with the W&B run.
        ray_metrics: export each key as a Ray gauge (visible in the Ray dashboard's metrics) when Ray is
            initialised in this process.
        run_label: the gauges' ``run`` label (:data:`RUN_TAG`), which tells runs sharing one Ray cluster
            apart in Grafana; None: the run's id (``run_id`` in ``run_dir``) when it has one, else the
            directory's name.
    """

    def __init__(self, run_dir: str | Path, cfg: LoggingSection, run_name: str = "covr",
                 config: Optional[dict[str, Any]] = None, ray_metrics: bool = True,
                 run_label: Optional[str] = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths = RunDir(self.run_dir)
        if run_label is None:
            run_label = paths.run_id if paths.run_id_path.is_file() else self.run_dir.resolve().name
        self.run_label = run_label
        self.cfg = cfg
        self._tb = None
        self._wandb_run = None
        self._csv_file = None
        self._csv = None
        self._gauges: dict[str, Any] = {}
        self._ray = False
        if cfg.csv:
            path = paths.metrics_csv
            new = not path.exists()
            self._csv_file = open(path, "a", newline="")  # noqa: SIM115 - closed in close()
            self._csv = csv.writer(self._csv_file)
            if new:
                self._csv.writerow(["step", "key", "value", "time"])
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(paths.tensorboard))
        if cfg.wandb:
            self._wandb_run = self._start_wandb(run_name, config)
        if ray_metrics:
            import ray

            self._ray = ray.is_initialized()

    def _start_wandb(self, run_name: str, config: Optional[dict[str, Any]]):
        mode = wandb_mode(self.cfg)
        if mode == "disabled":
            return None
        os.environ["WANDB_MODE"] = mode  # W&B reads the mode from the environment in its service process
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        wandb_dir = RunDir(self.run_dir).wandb
        # W&B writes to <dir>/wandb: pass the parent of the run's wandb/ directory.
        run = wandb.init(project=self.cfg.wandb_project, name=run_name, dir=str(wandb_dir.parent),
                         config=config or {}, mode=mode, reinit="finish_previous")
        log.info("W&B run %s (%s)%s", run.name, mode,
                 "; upload later with `wandb sync " + str(wandb_dir) + "`" if mode == "offline" else "")
        return run

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write ``metrics`` (namespaced key -> number) at ``step`` (env steps). Non-finite values are kept
        in CSV/W&B (they are information) but skipped for Ray gauges."""
        clean = {check_key(k): float(v) for k, v in metrics.items() if v is not None}
        if not clean:
            return
        now = time.time()
        if self._csv is not None:
            for k, v in clean.items():
                self._csv.writerow([step, k, repr(v), f"{now:.3f}"])
            self._csv_file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(clean, step=step)
        if self._ray:
            self._set_gauges(clean)

    def _set_gauges(self, clean: Mapping[str, float]) -> None:
        from ray.util.metrics import Gauge

        for k, v in clean.items():
            if not math.isfinite(v):
                continue
            gauge = self._gauges.get(k)
            if gauge is None:
                gauge = self._gauges[k] = Gauge(ray_metric_name(k), description=f"COVR metric {k}",
                                                tag_keys=(RUN_TAG,))
                gauge.set_default_tags({RUN_TAG: self.run_label})
            gauge.set(v)

    def close(self) -> None:
        """Flush and close every backend (idempotent)."""
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The row a run logs when it starts (:meth:`covr_ray.loop.orchestrator.CovrRun.setup`), at its env step: value
#: 1 when it resumed from a checkpoint at that step, 0 for a fresh start.
RESUMED_KEY = "loop/resumed"


def read_csv_metrics(path: str | Path, latest_timeline: bool = True) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> {key: [(step, value), ...]} in file order.

    A run stopped after its checkpoint at step s and resumed from it has logged the steps past s twice: the
    stopped run's rows stay in the file (nothing written is removed) and the resumed run appends its own after
    its :data:`RESUMED_KEY` row at step s. With ``latest_timeline`` (the default) the rows the stopped run
    logged past s are left out when that marker is read, so every reader sees the run the checkpoints and the
    adapters now describe (one value per round, not the abandoned attempt's as well); False returns every row.
    """
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step, value = int(row["step"]), float(row["value"])
            if latest_timeline and row["key"] == RESUMED_KEY and value > 0:
                out = {k: kept for k, rows in out.items() if (kept := [r for r in rows if r[0] <= step])}
            out.setdefault(row["key"], []).append((step, value))
    return out
