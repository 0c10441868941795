"""``covr bench prior --json`` end to end on the tiny model (slow: two engine starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = {"backend", "batched_qps", "sequential_qps", "batch_over_sequential", "p50_ms", "p95_ms", "hot_swap_s",
        "full_reload_s", "failed_queries_during_swap"}


@pytest.mark.slow
@pytest.mark.requires_vllm
def test_bench_prior_prints_the_figures(tiny_vlm_dir: Path) -> None:
    env = dict(os.environ, COVR_CACHE=str(tiny_vlm_dir.parent))
    proc = subprocess.run([sys.executable, "-m", "covr_ray.cli", "bench", "prior", "--json", "--model",
                           str(tiny_vlm_dir), "--queries", "32", "--rounds", "1", "--sequential", "3"],
                          capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= set(out) and out["backend"] == "vllm"
    assert out["failed_queries_during_swap"] == 0
    assert out["batched_qps"] > out["sequential_qps"] > 0
    assert 0 < out["hot_swap_s"] < out["full_reload_s"]
    assert out["p95_ms"] >= out["p50_ms"] > 0
