"""Adapter acceptance: only the run's own directory, only servable files, versions only move forward."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from covr_ray.errors import AdapterError
from covr_ray.lora.versions import BASE_VERSION, adapter_path, adapter_versions, list_adapters
from covr_ray.prior.adapters import AdapterRegistry, validate_adapter


def _write_adapter(path: Path, rank: int = 8, weights: bytes | None = None) -> Path:
    """A PEFT-shaped adapter directory: config JSON + a minimal valid safetensors file."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 16}))
    if weights is None:
        header = json.dumps({"base_model.lora_A.weight": {"dtype": "F32", "shape": [1, 1],
                                                            "data_offsets": [0, 4]}}).encode()
        weights = struct.pack("<Q", len(header)) + header + b"\0\0\0\0"
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_layout_and_latest(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    assert list_adapters(root) == []
    for v in (3, 1, 12):
        _write_adapter(adapter_path(root, v))
    (root / ".v13.abc.tmp").mkdir()  # an unfinished atomic write is not a version
    (root / "v14").mkdir()  # nor a version directory without its adapter_config.json
    assert adapter_versions(root) == [1, 3, 12]
    assert list_adapters(root)[-1] == (12, root / "v12")
    assert validate_adapter(root / "v3", 3, root, max_rank=8).rank == 8


def test_paths_outside_the_run_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "run" / "adapters"
    root.mkdir(parents=True)
    outside = _write_adapter(tmp_path / "elsewhere" / "v1")
    with pytest.raises(AdapterError, match="outside the run's adapter directory"):
        validate_adapter(outside, 1, root, max_rank=8)
    with pytest.raises(AdapterError, match="outside"):
        validate_adapter(root / ".." / ".." / "elsewhere" / "v1", 1, root, max_rank=8)
    (root / "v2").symlink_to(outside)  # a link inside pointing out is still outside
    with pytest.raises(AdapterError, match="outside"):
        validate_adapter(root / "v2", 2, root, max_rank=8)
    with pytest.raises(AdapterError, match="outside"):
        validate_adapter(root, 1, root, max_rank=8)


@pytest.mark.parametrize("case,match", [
    ("no_config", "adapter_config.json"),
    ("bad_json", "not JSON"),
    ("rank_too_big", "rank 16"),
    ("garbage_weights", "header length"),
    ("truncated", "truncated"),
    ("no_weights", "no adapter_model.safetensors"),
    ("wrong_version_name", "is version 1"),
])
def test_broken_adapters_are_refused_with_a_reason(tmp_path: Path, case: str, match: str) -> None:
    root = tmp_path / "adapters"
    path = _write_adapter(root / "v1", rank=16 if case == "rank_too_big" else 8)
    version = 1
    if case == "no_config":
        (path / "adapter_config.json").unlink()
    elif case == "bad_json":
        (path / "adapter_config.json").write_text("{not json")
    elif case == "garbage_weights":
        (path / "adapter_model.safetensors").write_bytes(b"garbage" * 100)
    elif case == "truncated":
        (path / "adapter_model.safetensors").write_bytes(b"\1\2")
    elif case == "no_weights":
        (path / "adapter_model.safetensors").unlink()
    elif case == "wrong_version_name":
        version = 2
    with pytest.raises(AdapterError, match=match):
        validate_adapter(path, version, root, max_rank=8)


def test_registry_moves_forward_and_keeps_a_bounded_set(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    reg = AdapterRegistry(root, max_adapters=2, max_rank=8)
    assert reg.version == BASE_VERSION and reg.current is None
    dropped_all = []
    for v in (1, 2, 3):
        adapter = reg.check(_write_adapter(adapter_path(root, v)), v)
        dropped_all += reg.commit(adapter)
    assert reg.version == 3
    assert [a.version for a in reg.loaded] == [2, 3]
    assert [a.version for a in dropped_all] == [1]
    with pytest.raises(AdapterError, match="not newer"):
        reg.check(root / "v2", 2)
    with pytest.raises(AdapterError, match="integer >= 0"):
        reg.check(root / "v4", -5)
    with pytest.raises(AdapterError, match="integer >= 0"):
        adapter_path(root, True)  # type: ignore[arg-type]
