"""transformers backend of the prior service: batched ``generate`` with left padding and PEFT adapters.

Used where vLLM is not installed, and as the sequential baseline of ``covr bench prior``. It has no
guided decoding: answers are free text, parsed leniently by the codec, and unparseable ones are counted
by the service as parse failures ("no prior").
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from covr_ray.errors import AdapterError
from covr_ray.log import get_logger
from covr_ray.prior.adapters import AdapterVersion
from covr_ray.prior.backend import BackendOptions
from covr_ray.prior.prompts import PromptBuilder

log = get_logger(__name__)


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class HFBackend:
    """A transformers VLM (plus PEFT adapters). Use from one thread only."""

    name = "transformers"
    guided = False

    def __init__(self, options: BackendOptions) -> None:
        from covr_ray.vlm.loader import load_hf

        self.options = options
        self.family = options.family
        self.device = _device(options.device)
        self.model, self.processor = load_hf(options.model, device=self.device, dtype=options.dtype,
                                             family=options.family)
        self.base = self.model
        self.prompts = PromptBuilder(options.family, self.processor)
        self._active: Optional[int] = None

    def _use(self, adapter: Optional[AdapterVersion]) -> Any:
        """The module to call for ``adapter``: the PEFT model with that adapter active, or the base."""
        if adapter is None:
            return self.base
        if self._active != adapter.version:
            self.model.set_adapter(f"v{adapter.version}")
            self._active = adapter.version
        return self.model

    def generate(self, frames: Sequence[np.ndarray], instructions: Sequence[str],
                 adapter: Optional[AdapterVersion]) -> list[str]:
        """Answers for frames (H, W, 3) uint8 and their instructions, one padded ``generate`` call."""
        import torch

        from covr_ray.vlm.loader import to_pil

        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        prompts = [self.prompts.chat_prompt(text) for text in instructions]
        images = [to_pil(self.prompts.frame(frame)) for frame in frames]
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True).to(self.device)
        sample = self.options.temperature > 0
        kwargs: dict[str, Any] = dict(max_new_tokens=self.options.max_new_tokens, do_sample=sample,
                                      pad_token_id=tokenizer.pad_token_id)
        if sample:
            kwargs["temperature"] = self.options.temperature
        with torch.inference_mode():
            if adapter is None and self.model is not self.base:
                with self.model.disable_adapter():  # LoRA layers live inside the base modules
                    out = self.model.generate(**inputs, **kwargs)
            else:
                out = self._use(adapter).generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [s.strip() for s in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def load_adapter(self, adapter: AdapterVersion) -> None:
        """Load a validated PEFT adapter beside the others; AdapterError (model unchanged) on failure."""
        from peft import PeftModel
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        name = f"v{adapter.version}"
        try:  # read the weights before touching the model: a broken file then changes nothing
            load_file(f"{adapter.path}/adapter_model.safetensors")
        except (SafetensorError, OSError) as exc:
            raise AdapterError(f"adapter v{adapter.version} at {adapter.path} has unreadable weights: {exc}") from exc
        first = self.model is self.base
        try:
            if first:
                self.model = PeftModel.from_pretrained(self.base, adapter.path, adapter_name=name).eval()
            else:
                self.model.load_adapter(adapter.path, adapter_name=name)
        # peft raises several unrelated types for an adapter that does not fit the model.
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            if first:  # PEFT injected its layers into the base modules before failing: reload the base
                from covr_ray.vlm.loader import load_hf

                self.model, self.processor = load_hf(self.options.model, device=self.device,
                                                     dtype=self.options.dtype, family=self.options.family)
                self.base = self.model
                self.prompts = PromptBuilder(self.options.family, self.processor)
            else:
                self._forget(name)
            raise AdapterError(f"transformers/peft refused adapter v{adapter.version} at {adapter.path}: "
                               f"{exc}") from exc
        self._active = None

    def _forget(self, name: str) -> None:
        if self.model is not self.base and name in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter(name)
            self._active = None

    def unload_adapter(self, adapter: AdapterVersion) -> None:
        name = f"v{adapter.version}"
        if self.model is not self.base and name in self.model.peft_config and self._active != adapter.version:
            self.model.delete_adapter(name)

    def close(self) -> None:
        self.model = self.base = None
