"""Shared test fixtures: markers that skip with a reason, a tiny VLM built once per session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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
    """A tiny random-weight Qwen2.5-VL built with `covr make-tiny-vlm`, cached across sessions."""
    from covr_ray.vlm.tiny import build_tiny_vlm

    out = CACHE / "tiny-qwen2_5_vl"
    if not (out / "config.json").is_file():
        build_tiny_vlm(out, family="qwen2_5_vl", seed=0)
    return out
