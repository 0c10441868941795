"""LoRA adapter versions served by the prior service: where they live, what is accepted, how many stay.

Layout: the run's adapter directory holds one directory per published version, ``v1``, ``v2``,
... (:func:`adapter_path`), each a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``)
written atomically by the LoRA trainer. After a restart the service reloads the newest complete one
(:func:`covr_ray.lora.versions.list_adapters`).

:func:`validate_adapter` refuses, with :class:`~covr_ray.errors.AdapterError`, anything outside the run's
adapter directory (symlinks resolved), a directory whose name says another version, missing or unreadable
files, and ranks the engine cannot serve. :class:`AdapterRegistry` tracks the serving version and the
bounded set of loaded ones (older versions are dropped beyond ``max_adapters``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from covr_ray.errors import AdapterError
from covr_ray.lora.versions import BASE_VERSION, version_of

#: Largest safetensors header we read (the format itself caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class AdapterVersion:
    """One validated adapter: its version number, resolved directory and LoRA rank."""

    version: int
    path: str
    rank: int


def _safetensors_ok(path: Path) -> None:
    """Read the safetensors header (8-byte length + JSON) without loading tensors; raise AdapterError."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise AdapterError(f"adapter weights {path} are truncated ({len(head)} bytes); allowed: a "
                                   "safetensors file")
            (n,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if n <= 1 or n > _MAX_HEADER_BYTES or 8 + n > size:
                raise AdapterError(f"adapter weights {path} have a header length of {n} bytes in a {size}-byte "
                                   "file; allowed: a safetensors file")
            header = json.loads(fh.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter weights {path} are unreadable: {exc}; allowed: a safetensors file") from exc
    if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
        raise AdapterError(f"adapter weights {path} hold no tensors; allowed: a PEFT LoRA safetensors file")


def validate_adapter(path: str | Path, version: int, adapter_dir: str | Path, max_rank: int) -> AdapterVersion:
    """Check that ``path`` is a servable adapter of the run; return it as an :class:`AdapterVersion`.

    Raises:
        AdapterError: naming the path or value and what is allowed.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise AdapterError(f"adapter version {version!r}; allowed: an integer >= 0")
    root = Path(adapter_dir).resolve()
    resolved = Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise AdapterError(f"adapter path {str(path)!r} resolves to {str(resolved)!r}, outside the run's adapter "
                           f"directory {str(root)!r}; allowed: a subdirectory of it")
    named = version_of(resolved)
    if named is not None and named != version:
        raise AdapterError(f"adapter directory {resolved.name!r} is version {named}, but version {version} was "
                           "given; allowed: the version its name says")
    if not resolved.is_dir():
        raise AdapterError(f"adapter path {str(resolved)!r} is not a directory; allowed: a PEFT adapter directory")
    config_file = resolved / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"adapter config {config_file} is missing or not JSON ({exc}); allowed: the "
                           "adapter_config.json PEFT writes") from exc
    rank = config.get("r") if isinstance(config, dict) else None
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= max_rank:
        raise AdapterError(f"adapter {resolved.name} has LoRA rank {rank!r}; allowed: 1..{max_rank} (the "
                           "engine's max_lora_rank, set by lora.rank)")
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {resolved.name} has peft_type {config.get('peft_type')!r}; allowed: 'LORA'")
    weights = resolved / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterError(f"adapter {resolved.name} has no adapter_model.safetensors; allowed: a PEFT adapter "
                           "saved with safetensors")
    _safetensors_ok(weights)
    return AdapterVersion(version=version, path=str(resolved), rank=rank)


class AdapterRegistry:
    """The serving adapter version and the loaded ones, bounded to ``max_adapters``.

    Versions only move forward: a version <= the serving one is refused. The caller loads the adapter
    into its engine first and calls :meth:`commit` only on success, so a failed load changes nothing.
    """

    def __init__(self, adapter_dir: str | Path, max_adapters: int, max_rank: int) -> None:
        if max_adapters < 1:
            raise AdapterError(f"max_adapters {max_adapters!r}; allowed: an integer >= 1")
        self.adapter_dir = Path(adapter_dir)
        self.max_adapters = max_adapters
        self.max_rank = max_rank
        self._loaded: list[AdapterVersion] = []

    @property
    def current(self) -> Optional[AdapterVersion]:
        """The adapter new queries use, or None for the base model."""
        return self._loaded[-1] if self._loaded else None

    @property
    def version(self) -> int:
        """Serving version, BASE_VERSION (-1) for the base model."""
        return self._loaded[-1].version if self._loaded else BASE_VERSION

    @property
    def loaded(self) -> list[AdapterVersion]:
        """Loaded versions, oldest first."""
        return list(self._loaded)

    def check(self, path: str | Path, version: int) -> AdapterVersion:
        """Validate a candidate (see :func:`validate_adapter`) that must be newer than the serving one."""
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise AdapterError(f"adapter version {version!r}; allowed: an integer >= 0")
        if version <= self.version:
            raise AdapterError(f"adapter version {version} is not newer than the serving version {self.version}; "
                               "allowed: a version > the serving one (versions only move forward)")
        return validate_adapter(path, version, self.adapter_dir, self.max_rank)

    def commit(self, adapter: AdapterVersion) -> list[AdapterVersion]:
        """Make ``adapter`` the serving version; return the versions to drop (oldest beyond the bound)."""
        self._loaded.append(adapter)
        dropped = self._loaded[:-self.max_adapters]
        self._loaded = self._loaded[-self.max_adapters:]
        return dropped
