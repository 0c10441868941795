"""The run directory and the loop's checkpoint state.

Layout of ``RUN_DIR``::

    config.yaml              the resolved config (``covr train --resume RUN_DIR`` reads it back)
    run_id                   the run's id, made once at creation: it names the run's Ray actors
                             (``covr-prior-<run_id>-<replica>``, ``covr-lora-<run_id>``), so a resumed run
                             finds its own prior service and two runs on one cluster never collide
    .lock                    held (``flock``) by the one driver running the run; released by the kernel
                             when that process ends, even by SIGKILL
    checkpoints/ckpt-<env steps>/
        algorithm/           RLlib state: RL module, optimisers, lambda, replay buffer
        loop_state.json      env steps, schedule (round, interval), adapter version, RNG states
    checkpoints/LATEST       name of the newest complete checkpoint (replaced atomically)
    adapters/v<N>/           LoRA adapters by version (PEFT format)
    df/runner-<i>/           D_f shards written by each env runner
    rounds/round-<c>-step<steps>/  the kept (EDDF-filtered, RALW-weighted) shard set of fine-tune round c
    rounds/round-<c>-step<steps>.set-aside-<n>/  a kept set a resumed run set aside: of a round that had
                             not completed at its checkpoint and that no adapter was trained on
    policy/policy.pt         the deployable policy (encoder + actor), refreshed at every checkpoint
    eval/eval-<steps>.json   evaluations (``covr eval``, the loop's periodic ones);
    eval/video-<steps>.<ext> the first evaluation episode as mp4 or gif (``covr eval --video``)
    eval/vlm-v<N>.json       the VLM alone as the policy with adapter version N (v0 = base model;
                             ``covr eval --actor vlm``); eval/vlm-v<N>.<ext> its first episode's video
    export/                  exported artifacts (``covr export``)
    metrics.csv, tb/, wandb/ metrics: CSV (step, key, value, time), TensorBoard, W&B

:class:`RunDir` is the one place these names are spelled: every other module asks ``RunDir(path)`` for them.

A checkpoint directory is written under a temporary name and renamed when complete, then ``LATEST`` is
replaced; a crash at any point leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from covr_ray.config import CovrConfig, config_from_dict, save_config
from covr_ray.errors import CheckpointError
from covr_ray.io import atomic_write_text

LOOP_STATE_FORMAT = 1
_RUNNER_PREFIX = "runner-"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_EVAL_RESULT_RE = re.compile(r"^eval-(\d+)\.json$")
_ROUND_DIR_RE = re.compile(r"^round-(\d+)-step(\d+)$")
_VLM_EVAL_RESULT_RE = re.compile(r"^vlm-v(\d+)\.json$")


def _first_free(candidate: Callable[[int], Path], n: int) -> Path:
    """``candidate(n)`` for the first ``n`` (counting up from the given one) that names nothing yet."""
    while candidate(n).exists():
        n += 1
    return candidate(n)


def new_run_id(root: Path) -> str:
    """``<run dir name, 40 chars at most>-<6 hex>``: readable in the Ray dashboard, unique per run."""
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "-", root.name)[:40].strip("-.") or "run"
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunDir:
    """Paths of one run (the layout in the module docstring). ``RunDir(path)`` only names paths: nothing is
    read or made; :meth:`open` and :meth:`create` are the checked entries."""

    root: Path
    _lock_fd: Optional[int] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def df(self) -> Path:
        return self.root / "df"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    def checkpoint(self, env_steps: int) -> Path:
        """``checkpoints/ckpt-<env steps, 10 digits>``: the checkpoint taken at ``env_steps``."""
        return self.checkpoints / f"ckpt-{int(env_steps):010d}"

    def round_dir(self, round_index: int, env_steps: int) -> Path:
        """``rounds/round-<c, 3 digits>-step<env steps>``: the kept shard set of fine-tune round ``c``."""
        return self.rounds / f"round-{int(round_index):03d}-step{int(env_steps)}"

    def round_dirs(self) -> list[tuple[int, int, Path]]:
        """Every :meth:`round_dir` present, as ``(round index, env steps, path)`` sorted by round."""
        if not self.rounds.is_dir():
            return []
        found = ((_ROUND_DIR_RE.match(p.name), p) for p in self.rounds.iterdir() if p.is_dir())
        return sorted((int(m.group(1)), int(m.group(2)), p) for m, p in found if m)

    def set_aside_round_dirs(self, from_round: int, keep: Optional[Path] = None) -> list[Path]:
        """Rename every :meth:`round_dir` of round ``from_round`` or later except ``keep`` to
        ``<name>.set-aside-<n>`` (first free ``n >= 1``; :meth:`round_dirs` no longer lists it) and return the
        new paths. A resumed run calls this for kept sets of rounds not completed at its checkpoint that no
        adapter was trained on: it runs those rounds again under the same names, and nothing written is
        deleted."""
        moved = []
        for index, _steps, path in self.round_dirs():
            if index < from_round or (keep is not None and path.resolve() == Path(keep).resolve()):
                continue
            target = _first_free(lambda n, p=path: p.with_name(f"{p.name}.set-aside-{n}"), 1)
            path.rename(target)
            moved.append(target)
        return moved

    @property
    def policy(self) -> Path:
        """``policy/policy.pt``: the deployable policy artifact (:mod:`covr_ray.policy_io`)."""
        return self.root / "policy" / "policy.pt"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def eval_result(self, env_steps: int) -> Path:
        """``eval/eval-<env_steps>.json``: the evaluation of the policy trained for ``env_steps``."""
        return self.eval / f"eval-{int(env_steps)}.json"

    def new_eval_result(self, env_steps: int) -> Path:
        """Where a new evaluation of the policy trained for ``env_steps`` goes without replacing one already
        written (the loop's own, an earlier ``covr eval``): :meth:`eval_result` while it is free, else
        ``eval/eval-<env_steps>.<n>.json`` with the first free ``n >= 2`` (read by hand; :meth:`eval_results`
        lists the first only)."""
        first = self.eval_result(env_steps)
        return first if not first.exists() else _first_free(lambda n: self.eval / f"eval-{int(env_steps)}.{n}.json", 2)

    def eval_results(self) -> list[tuple[int, Path]]:
        """Every :meth:`eval_result` file present, as ``(env_steps, path)`` sorted by steps (none when
        ``eval/`` is absent)."""
        if not self.eval.is_dir():
            return []
        found = ((_EVAL_RESULT_RE.match(p.name), p) for p in self.eval.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def eval_video(self, env_steps: int, ext: str) -> Path:
        """``eval/video-<env_steps>.<ext>`` (``mp4`` or ``gif``): the first evaluation episode."""
        return self.eval / f"video-{int(env_steps)}.{ext}"

    def vlm_eval_result(self, version: int) -> Path:
        """``eval/vlm-v<version>.json``: the VLM alone as the policy with adapter ``version`` (0 = base)."""
        return self.eval / f"vlm-v{int(version)}.json"

    def vlm_eval_results(self) -> list[tuple[int, Path]]:
        """Every :meth:`vlm_eval_result` file present, as ``(version, path)`` sorted by version."""
        if not self.eval.is_dir():
            return []
        found = ((_VLM_EVAL_RESULT_RE.match(p.name), p) for p in self.eval.iterdir())
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def vlm_eval_video(self, version: int, ext: str) -> Path:
        """``eval/vlm-v<version>.<ext>`` (``mp4`` or ``gif``): the VLM's first evaluation episode."""
        return self.eval / f"vlm-v{int(version)}.{ext}"

    def random_eval_result(self) -> Path:
        """``eval/random.json``: uniform random actions on the run's env (``covr eval --actor random``). Its
        video: the same name with the video suffix."""
        return self.eval / "random.json"

    def constant_eval_result(self) -> Path:
        """``eval/constant.json``: one constant action on the run's env (``covr eval --actor constant``); the
        newest such evaluation (it records its action). Its video: the same name with the video suffix."""
        return self.eval / "constant.json"

    @property
    def export(self) -> Path:
        """``export/``: the default directory of ``covr export`` artifacts."""
        return self.root / "export"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def wandb(self) -> Path:
        """``wandb/``: where W&B puts its files when ``wandb.init(dir=root)``; ``wandb sync`` reads it."""
        return self.root / "wandb"

    @property
    def run_id_path(self) -> Path:
        return self.root / "run_id"

    @property
    def run_id(self) -> str:
        """The run's persisted id (see the module docstring). A run directory made before ids were persisted
        gets one now: the id its newest checkpoint recorded, else a new one; it is written once."""
        if self.run_id_path.is_file():
            text = self.run_id_path.read_text().strip()
            if not _RUN_ID_RE.match(text):
                raise CheckpointError(f"{self.run_id_path} holds {text!r}, not a run id (letters, digits, "
                                      "'_', '.', '-'); restore the file or delete it to get a new id")
            return text
        run_id = None
        latest = self.latest_checkpoint()
        if latest is not None:
            run_id = read_loop_state(latest).get("run_id")
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
            run_id = new_run_id(self.root)
        atomic_write_text(self.run_id_path, run_id + "\n")
        return run_id

    def lock(self) -> None:
        """Take the run's driver lock (non-blocking). Two drivers on one run would interleave checkpoints,
        adapters and D_f; the second is refused. The kernel releases the lock when the holder exits, however
        it exits, so a crashed run can be resumed at once.

        Raises:
            CheckpointError: another live process holds the lock (its pid is named).
        """
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.root} is being run by another driver (pid {holder}); wait for it to "
                                  "end or stop it before `covr train --resume`") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the driver lock (idempotent; process exit releases it too)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def create(cls, root: str | Path, cfg: CovrConfig) -> "RunDir":
        """A new run: ``root`` must not hold a run yet; writes config.yaml. Paths are made absolute (RLlib
        reads a relative checkpoint path as a URI and refuses it; env runners may have another cwd)."""
        run = cls(Path(root).resolve())
        if run.config_path.exists():
            raise CheckpointError(f"{run.root} already holds a run; continue it with `covr train --resume "
                                  f"{run.root}` or choose another run_dir")
        for d in (run.root, run.checkpoints, run.adapters, run.df, run.rounds, run.eval):
            d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.run_id_path, new_run_id(run.root) + "\n")
        save_config(cfg, run.config_path)
        return run

    @classmethod
    def open(cls, root: str | Path) -> tuple["RunDir", CovrConfig]:
        """An existing run (path made absolute, see :meth:`create`) and its config (:meth:`read_config`)."""
        run = cls(Path(root).resolve())
        return run, run.read_config()

    def read_config(self) -> CovrConfig:
        """The run's validated config (``config.yaml``).

        Raises:
            CheckpointError: no ``config.yaml`` (``root`` is not a run directory), unreadable YAML, or YAML
                that is not a mapping.
            ConfigError: the mapping does not make a valid config.
        """
        import yaml

        path = self.config_path
        if not path.is_file():
            raise CheckpointError(f"{self.root} is not a run directory: {path.name} is missing (written by "
                                  "`covr train`)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise CheckpointError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a config mapping")
        return config_from_dict(data)

    def df_runner(self, index: int) -> Path:
        """D_f directory of env runner ``index`` (its recorder's :class:`~covr_ray.df.writer.FilterBuffer`)."""
        return self.df / f"{_RUNNER_PREFIX}{int(index)}"

    def df_shards(self) -> list[Path]:
        """Complete D_f shards of every env runner (temp files of writers mid-write are excluded)."""
        from covr_ray.df.shards import SHARD_SUFFIX

        return sorted(p for p in self.df.glob(f"{_RUNNER_PREFIX}*/df-*{SHARD_SUFFIX}") if not p.name.startswith("."))

    def latest_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        pointer = self.checkpoints / "LATEST"
        if not pointer.is_file():
            return None
        path = self.checkpoints / pointer.read_text().strip()
        if not (path / "loop_state.json").is_file():
            raise CheckpointError(f"{pointer} names {path.name}, which is incomplete or missing")
        return path

    def commit_checkpoint(self, path: Path, keep: int = 2) -> None:
        """Point LATEST at ``path`` (atomically), then delete all but the newest ``keep`` checkpoints."""
        atomic_write_text(self.checkpoints / "LATEST", path.name + "\n")
        done = sorted((p for p in self.checkpoints.glob("ckpt-*") if (p / "loop_state.json").is_file()),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-keep]:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states (JSON-serialisable)."""
    import torch

    py = random.getstate()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": _np_state_to_json(np.random.get_state()),
            "torch": torch.get_rng_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(_np_state_from_json(state["numpy"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _np_state_to_json(st: tuple) -> list:
    return [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]


def _np_state_from_json(st: list) -> tuple:
    return (st[0], np.asarray(st[1], dtype=np.uint32), st[2], st[3], st[4])


def write_loop_state(path: Path, state: dict[str, Any]) -> None:
    state = dict(state, format_version=LOOP_STATE_FORMAT, written_at=time.time())
    atomic_write_text(path / "loop_state.json", json.dumps(state))


def read_loop_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / "loop_state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {checkpoint / 'loop_state.json'}: {exc}") from exc
    if state.get("format_version") != LOOP_STATE_FORMAT:
        raise CheckpointError(f"{checkpoint} has loop state format {state.get('format_version')!r}; this "
                              f"version of COVR-Ray reads format {LOOP_STATE_FORMAT}")
    return state
