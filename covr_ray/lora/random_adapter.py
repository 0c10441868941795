"""Random LoRA adapters for benchmarks and hot-swap tests, built without loading the model's weights.

A freshly initialised LoRA (B = 0) does not change the model; the adapters made here have random A *and* B,
so they change its answers, which is what hot-swap benchmarks and tests need. They are not trained
adapters. The model's skeleton is built from its ``config.json`` on torch's ``meta`` device (no weights are
read or allocated), only to find the target layers and their shapes; the adapter is then written in PEFT's
format (``adapter_config.json`` + ``adapter_model.safetensors``) atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from covr_ray.config import LANGUAGE_MODEL_TARGETS
from covr_ray.errors import ConfigError
from covr_ray.io import atomic_directory


def target_shapes(model: str, target_modules: str = LANGUAGE_MODEL_TARGETS) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` of the linear layers ``target_modules`` matches (PEFT's
    rule for a string: ``re.fullmatch`` over module names), from the model's config alone."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    shapes = {name: (mod.in_features, mod.out_features) for name, mod in skeleton.named_modules()
              if isinstance(mod, torch.nn.Linear) and re.fullmatch(target_modules, name)}
    if not shapes:
        raise ConfigError("target_modules", target_modules, f"a regex matching linear layers of {model}")
    return shapes


def build_random_adapter(model: str, out_dir: str | Path, *, rank: int = 8, alpha: int = 64, seed: int = 0,
                         target_modules: str = LANGUAGE_MODEL_TARGETS) -> Path:
    """Write a PEFT LoRA adapter for ``model`` with random A and B matrices into ``out_dir`` (atomically).

    A and B are drawn like PEFT's ``init_lora_weights=False`` (uniform in ``+-1/sqrt(fan_in)``).
    Returns ``out_dir``.
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (fan_in, fan_out) in sorted(target_shapes(model, target_modules).items()):
        a = (torch.rand(rank, fan_in, generator=gen) * 2 - 1) / fan_in ** 0.5
        b = (torch.rand(fan_out, rank, generator=gen) * 2 - 1) / rank ** 0.5
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=target_modules,
                   base_model_name_or_path=str(model)).save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out
