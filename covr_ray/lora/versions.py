"""The adapter directory's contract: versions, names and completeness, shared by the writer and readers.

The LoRA trainer publishes version ``N`` of the run's adapter as ``<adapter_dir>/v<N>/``, a PEFT adapter
(``adapter_config.json`` + ``adapter_model.safetensors``, plus ``covr_adapter.json``: what it was trained
on), written under a temporary name and renamed when complete (:func:`covr_ray.io.atomic_directory`). The
prior service serves versions (:mod:`covr_ray.prior.adapters`), the replay tags each prior with the version
that answered it, and ``covr eval --actor vlm`` walks them. Version ``-1`` (:data:`BASE_VERSION`) is the
base model with no adapter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from covr_ray.errors import AdapterError

#: Version of "no adapter": the base model answers.
BASE_VERSION = -1
#: File of a complete PEFT adapter (written last by ``save_pretrained``'s caller's atomic rename).
ADAPTER_CONFIG = "adapter_config.json"
#: What the trainer records beside each version (base model, kept set, codec, prompt, the round's metrics).
META_FILE = "covr_adapter.json"
_VERSION_DIR = re.compile(r"^v(\d{1,9})$")


def adapter_path(adapter_dir: str | Path, version: int) -> Path:
    """Where version ``version`` is published: ``<adapter_dir>/v<version>``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise AdapterError(f"adapter version {version!r}; allowed: an integer >= 0")
    return Path(adapter_dir) / f"v{version}"


def version_of(path: str | Path) -> Optional[int]:
    """Version number encoded in a directory name ``v<N>`` (``v7``, ``v000007``), or None for other names."""
    m = _VERSION_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_adapters(adapter_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete published versions in ``adapter_dir`` as ``(version, path)``, oldest first (temp directories
    and directories without an ``adapter_config.json`` are ignored)."""
    root = Path(adapter_dir)
    if not root.is_dir():
        return []
    found = [(version_of(p), p) for p in root.iterdir() if (p / ADAPTER_CONFIG).is_file()]
    return sorted((v, p) for v, p in found if v is not None)


def adapter_versions(adapter_dir: str | Path) -> list[int]:
    """The version numbers of :func:`list_adapters`."""
    return [v for v, _ in list_adapters(adapter_dir)]


def adapter_meta(path: str | Path) -> dict:
    """The :data:`META_FILE` of the adapter at ``path`` as a dict; {} when it is missing or unreadable."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def adapter_round_metrics(path: str | Path) -> dict[str, float]:
    """The ``lora/*`` metrics of the round that trained the adapter at ``path`` (recorded in its
    :data:`META_FILE` under ``metrics``); {} for an adapter without them (written before they were recorded,
    or an unreadable file): a run that collects a round from its adapter at a resume logs them again."""
    metrics = adapter_meta(path).get("metrics")
    if not isinstance(metrics, dict):
        return {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
