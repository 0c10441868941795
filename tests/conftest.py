"""Shared test fixtures: markers that skip with a reason, a tiny VLM built once per session, one torch
thread, a local Ray per test module, a fake CARLA server. Shared helpers that are not fixtures live in
``support/`` (see support/__init__.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("COVR_TEST_CACHE", REPO / ".cache" / "test"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {}
    if not config.getoption("--run-slow"):
        reasons["slow"] = "slow learning/benchmark run: use `make test-all` or --run-slow"
    if not _has_cuda():
        reasons["requires_gpu"] = "no CUDA GPU on this machine"
    if importlib.util.find_spec("vllm") is None:
        reasons["requires_vllm"] = "vllm is not installed (pip install 'covr-ray[cpu]' or '[gpu]')"
    if not os.environ.get("CARLA_HOST"):
        reasons["requires_carla_server"] = "set CARLA_HOST (and CARLA_PORT) to a running CARLA server"
    for item in items:
        for marker, reason in reasons.items():
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_vlm_dir() -> Path:
    """A tiny random-weight Qwen2.5-VL built with `covr make-tiny-vlm`, cached across sessions and rebuilt
    when covr_ray/vlm/tiny.py changes (:func:`covr_ray.vlm.tiny.ensure_tiny_vlm`)."""
    from covr_ray.vlm.tiny import ensure_tiny_vlm

    return ensure_tiny_vlm(CACHE / "tiny-qwen2_5_vl")


def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread during a test: on the shared 2-core box, torch's two OpenMP threads spin
    against other processes (a tiny conv took 55 ms with 2 threads vs 2.6 ms with 1 under load)."""
    yield from _one_torch_thread()


@pytest.fixture(scope="module")
def torch_one_thread_module() -> Iterator[None]:
    """``torch_one_thread`` for a whole module, its module-scoped fixtures included (the tiny VLM's training
    and generation were ~10x slower with two threads on the loaded 2-core box)."""
    yield from _one_torch_thread()


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A fresh local Ray of 2 CPUs for one test module, in its own temp dir (support/ray_local.py)."""
    from support.ray_local import local_ray

    with local_ray(num_cpus=2):
        yield


@pytest.fixture
def fake_carla(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake CARLA server (support/carla_fake.py), reached through ``import carla`` during one test; skips
    the test without the real ``carla`` client wheel, whose value types the fake uses."""
    pytest.importorskip("carla", reason="the carla client wheel is not installed (pip install 'covr-ray[dev]')")
    from support.carla_fake import FakeServer, fake_carla_module

    server = FakeServer()
    monkeypatch.setitem(sys.modules, "carla", fake_carla_module(server))
    return server
