"""``covr bench lora``: LoRA fine-tune throughput (samples per second) and the trainable share.

Builds a kept shard set of ``--rows`` synthetic samples (random frames of the preset's image size, random
actions turned into the preset env's codec text, weight 1 so every sample trains), starts a
:class:`~covr_ray.lora.trainer.LoRATrainer` with the preset's ``lora`` section on ``--model``, runs
an untimed warm-up round of ``--warmup`` steps, then a timed round of ``--steps`` optimizer steps.
``samples_per_s`` is the trainer's own figure for the timed round: PNG decode, processor, forward,
RALW loss, backward and AdamW step per sample (model load and adapter save excluded). On CPU the bench runs
torch on one thread by default, as the trainer does inside its Ray actor (``num_cpus=1``).

How to run::

    covr bench lora --json                                   # tiny Qwen2.5-VL (built on first use), smoke preset
    covr bench lora --json --model Qwen/Qwen2.5-VL-3B-Instruct --preset carla-hw --device cuda

Prints one JSON object: ``samples_per_s``, ``trainable_frac``, ``device``, plus the model, rank, alpha,
batch size, steps, torch threads and the answer length in tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Optional

#: ``--model tiny``: the locally built tiny Qwen2.5-VL (``covr make-tiny-vlm``), built here if missing.
TINY_DIR = Path(".cache") / "tiny-qwen2_5_vl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="smoke", help="preset giving the lora and env sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override (repeatable), e.g. lora.rank=16")
    parser.add_argument("--model", default="tiny",
                        help=f"hub id or local VLM directory; 'tiny' = {TINY_DIR} (built if missing)")
    parser.add_argument("--rows", type=int, default=64, help="synthetic kept samples")
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step; default: the preset's")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads; default on CPU: 1, as in the trainer's Ray actor (num_cpus=1)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")


def _model_path(model: str) -> str:
    if model != "tiny":
        return model
    from covr_ray.vlm.tiny import ensure_tiny_vlm

    return str(ensure_tiny_vlm(TINY_DIR))


def run_bench(preset: str = "smoke", overrides: Optional[list[str]] = None, model: str = "tiny", rows: int = 64,
              steps: int = 16, warmup: int = 2, batch_size: Optional[int] = None, device: str = "auto",
              threads: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """Measure (see the module docstring); returns the figures."""
    import dataclasses

    import numpy as np
    import torch

    from covr_envs.registry import resolve_env_spec
    from covr_ray.config import load_config
    from covr_ray.errors import ConfigError
    from covr_ray.lora.trainer import LoRATrainer
    from covr_ray.select.kept import kept_set_from_arrays
    from covr_ray.prior.codecs import get_codec
    from covr_ray.prior.prompts import build_instruction

    for name, value, lo in (("--rows", rows, 1), ("--steps", steps, 1), ("--warmup", warmup, 0)):
        if value < lo:
            raise ConfigError(name, value, f"an integer >= {lo}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", device, "cpu or auto on a machine without CUDA")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if threads is None and on_cpu:
        threads = 1  # Ray gives the trainer actor (num_cpus=1) OMP_NUM_THREADS=1
    if threads is not None:
        torch.set_num_threads(threads)
    cfg = load_config(preset, overrides=list(overrides or []))
    lora = dataclasses.replace(cfg.lora, epochs=10_000, batch_size=batch_size or cfg.lora.batch_size)
    lora.validate("lora")
    spec = resolve_env_spec(cfg.env)
    codec = get_codec(spec.codec, spec.action_dim)
    rng = np.random.default_rng(seed)
    size = cfg.env.image_size
    frames = list(rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8))
    actions = rng.uniform(-1, 1, (rows, spec.action_dim))
    with tempfile.TemporaryDirectory(prefix="covr-bench-lora-") as tmp:
        kept = kept_set_from_arrays(Path(tmp) / "kept", frames, actions)
        trainer = LoRATrainer(_model_path(model), lora, spec.codec,
                              spec.action_dim, build_instruction(spec.prompt, spec.action_description, codec),
                              Path(tmp) / "adapters", device=device, dtype=cfg.prior.dtype, family=cfg.prior.family,
                              seed=seed, progress=False)
        if warmup:
            trainer.train_round(kept, max_steps=warmup)
        result = trainer.train_round(kept, max_steps=steps)
    m = result.metrics
    return {"samples_per_s": round(m["lora/samples_per_s"], 3), "trainable_frac": round(trainer.trainable_frac, 6),
            "device": trainer.device if trainer.device == "cpu" else torch.cuda.get_device_name(0),
            "model": model, "rank": lora.rank, "alpha": lora.alpha, "batch_size": lora.batch_size,
            "steps": int(m["lora/steps"]), "answer_tokens_mean": round(m["lora/answer_tokens_mean"], 2),
            "loss_first": round(m["lora/loss_first"], 4), "loss_last": round(m["lora/loss_last"], 4),
            "image_size": size, "torch_threads": torch.get_num_threads()}


def run(args: argparse.Namespace) -> int:
    from covr_ray.bench import print_figures

    figures = run_bench(preset=args.preset, overrides=args.overrides, model=args.model, rows=args.rows,
                        steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, device=args.device,
                        threads=args.threads)
    print_figures(figures, args.json)
    return 0
