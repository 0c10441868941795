"""Checks before a run starts anything: the files and directories a config names.

:func:`check_paths` (no Ray, no model load, cheap; ``covr train`` runs it before the run directory is made
and ``CovrRun.setup`` again before the driver lock and ``ray.init``) raises
:class:`~covr_ray.errors.ConfigError` naming the field, the value and what to do. Whether Ray can hold what
the run asks is checked right after ``ray.init`` by :func:`covr_ray.loop.resources.check_resources`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Optional

from covr_ray.config import CovrConfig
from covr_ray.errors import ConfigError
from covr_ray.log import get_logger

log = get_logger(__name__)

# A Hugging Face hub id as huggingface_hub's ``validate_repo_id`` accepts it: ``name`` or ``org/name``, each
# part of letters, digits, ``_``, ``-``, ``.``, starting and ending with a letter, digit or ``_``.
_HUB_PART = r"\w(?:[\w.-]*\w)?"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
_MODEL_HINT = ("Model hubs may be unreachable from this machine: download the model where one is reachable "
               "(`huggingface-cli download ORG/NAME --local-dir DIR`), copy DIR here and pass "
               "--set prior.model=DIR (or --vlm DIR); for the tiny test VLM run `covr make-tiny-vlm DIR`")


# --- paths ---------------------------------------------------------------------------------------------

def is_hub_id(model: str) -> bool:
    """True when ``model`` has the form of a hub id (``name`` or ``org/name``, see ``_HUB_ID``; no ``--`` or
    ``..``, not ending in ``.git``, at most 96 characters)."""
    return (bool(_HUB_ID.match(model)) and "--" not in model and ".." not in model
            and not model.endswith(".git") and len(model) <= 96)


def is_local_model_path(model: str) -> bool:
    """Whether ``prior.model`` names a local path rather than a hub id. The rule: it is a local path when

    - it exists on disk (relative to the working directory, as the loader reads it), or
    - it starts with ``/``, ``./``, ``../`` or ``~``, or contains a backslash, or
    - it is not of the hub-id form ``name`` / ``org/name`` (:func:`is_hub_id`): e.g. ``.cache/tiny-vlm``
      (a part starts with ``.``) or ``models/qwen/v2`` (two slashes).

    Anything else (``Qwen/Qwen2.5-VL-3B-Instruct``, ``gpt2``) is a hub id. A relative directory that does
    not exist yet and looks like ``org/name`` (``models/qwen``) cannot be told from a hub id: write it as
    ``./models/qwen`` to have it checked here.
    """
    text = model.strip()
    if text.startswith(("/", "./", "../", "~")) or text in (".", "..") or "\\" in text:
        return True
    if Path(text).exists():
        return True
    return not is_hub_id(text)


def check_model_path(model: str, field: str = "prior.model") -> None:
    """A local ``model`` (:func:`is_local_model_path`) must be a directory holding ``config.json``; a hub id
    passes (it is fetched or read from the hub cache by the loader, in the actors).

    Raises:
        ConfigError: naming ``field``, the value, the resolved path and what is wrong with it.
    """
    if not is_local_model_path(model):
        return
    path = Path(model.strip())
    allowed = "a hub id (org/name) or a local directory holding the model's config.json"
    where = f"{path.absolute()}" if not path.is_absolute() else str(path)
    tilde = " ('~' is not expanded: give the full path)" if model.strip().startswith("~") else ""
    if not path.exists():
        problem = f"{where} does not exist{tilde}"
    elif not path.is_dir():
        problem = f"{where} is a file, not a model directory"
    elif not (path / "config.json").is_file():
        problem = f"{where} has no config.json (not a Hugging Face model directory, or an incomplete copy)"
    else:
        return
    raise ConfigError(field, model, allowed, hint=f"{problem}. {_MODEL_HINT}")


def check_run_dir(run_dir: Optional[str], field: str = "run_dir") -> None:
    """``run_dir`` (when set) must be a directory or not exist yet, with its nearest existing ancestor a
    writable directory (the run makes it and its sub-directories)."""
    if run_dir is None:
        return
    path = Path(run_dir).absolute()
    allowed = "a directory for the run's outputs (new, or existing and writable)"
    if path.exists():
        if not path.is_dir():
            raise ConfigError(field, run_dir, allowed, hint=f"{path} is a file; choose another run_dir")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(field, run_dir, allowed, hint=f"{path} is not writable by this user")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(field, run_dir, allowed,
                          hint=f"cannot create {path}: {parent} is not a writable directory")


def _runs_locally(cfg: CovrConfig) -> bool:
    """True when ``covr train`` will start a local Ray (no ``ray.address``, no ``RAY_ADDRESS``): the env
    runners then run on this machine, so what they start must exist here."""
    return cfg.ray.address is None and not os.environ.get("RAY_ADDRESS")


def check_server_command(cfg: CovrConfig, field: str = "env.carla.server_command") -> None:
    """``env.carla.server_command`` (read by ``carla-*`` envs only) must parse as a command line; when the
    run uses a local Ray its program must exist here (on a cluster it runs on the env runners' nodes, which
    this machine cannot see)."""
    command = cfg.env.carla.server_command
    if command is None or not cfg.env.name.startswith("carla-"):
        return
    allowed = "a shell command line that starts the CARLA server (or null)"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(field, command, allowed, hint=f"it does not parse: {exc}") from exc
    if not argv:
        raise ConfigError(field, command, allowed, hint="it is empty; use null for no server command")
    if not _runs_locally(cfg):
        return
    program = argv[0]
    if os.sep in program:
        path = Path(program).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ConfigError(field, command, allowed,
                              hint=f"its program {path.absolute()} is not an executable file on this machine")
    elif shutil.which(program) is None:
        raise ConfigError(field, command, allowed, hint=f"its program {program!r} is not on this machine's PATH")


def check_paths(cfg: CovrConfig) -> None:
    """Every file or directory the config names, without Ray or a model load (milliseconds):

    - ``prior.model`` (when ``prior.enabled``): :func:`check_model_path`;
    - ``run_dir``: :func:`check_run_dir`;
    - ``env.carla.server_command`` (``carla-*`` envs): :func:`check_server_command`.

    The preset file is checked when the config is loaded; ``env.kwargs`` are the simulator's own and not
    interpreted here.

    Raises:
        ConfigError: naming the first offending field.
    """
    if cfg.prior.enabled:
        check_model_path(cfg.prior.model)
    check_run_dir(cfg.run_dir)
    check_server_command(cfg)
