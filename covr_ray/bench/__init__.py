"""Benchmarks: ``covr bench NAME`` runs one and prints its figures (one JSON object with ``--json``).

One module per bench, each with ``add_arguments(parser)`` and ``run(args) -> int``; torch and Ray are
imported inside ``run``, so listing the benches stays cheap. Speed and memory targets are checked here,
never by timed unit tests; a speed-up is measured as a ratio within one run.
"""

from __future__ import annotations

import json

#: bench name -> (module, one-line help). The order is the order of ``covr bench --help``.
BENCHES: dict[str, tuple[str, str]] = {
    "loop": ("covr_ray.bench.loop", "COVR's wall-clock over its base algorithm, and env rate with the prior on vs off"),
    "env": ("covr_ray.bench.env", "agent steps per second of one env under random actions (--env NAME --steps N)"),
    "deploy": ("covr_ray.bench.deploy", "single-observation latency p50/p99 and size of the exported policy"),
    "throughput": ("covr_ray.bench.throughput", "end-to-end agent steps/s of the base algorithm: covr train's path vs one process (--num-env-runners 1,2,4)"),
    "learner": ("covr_ray.bench.learner", "SAC updates/s through RLlib vs the same update in plain PyTorch (--batch-size B)"),
    "lora": ("covr_ray.bench.lora", "LoRA fine-tune samples/s and trainable share of the VLM (--model, --preset)"),
    "prior": ("covr_ray.bench.prior", "VLM prior service: batched vs sequential queries/s, p50/p95, hot swap vs reload"),
}


def print_figures(figures: dict, as_json: bool) -> None:
    """A benchmark's result: one JSON object (``as_json``) or one aligned ``key: value`` line per figure."""
    if as_json:
        print(json.dumps(figures))
        return
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")
