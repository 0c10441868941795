"""What the VLM is asked, per model family: the instruction text and the frame as the model sees it.

The instruction (:func:`build_instruction`) is the same for every family and for fine-tuning: the task
prompt, what each action dimension means, and the codec's answer format. The LoRA trainer must build its
inputs with the same function so that the served model sees exactly what it was tuned on; its target text
is ``codec.encode(a_r)``.

Per family (:data:`FAMILIES`):

- ``qwen2_5_vl`` / ``qwen2_vl``: ChatML with ``<|vision_start|><|image_pad|><|vision_end|>``; the image
  processor resizes dynamically (multiples of 28 px), so the frame is passed as is.
- ``llava`` (LLaVA-1.5): ``USER: <image>\\n{text} ASSISTANT:``; its CLIP processor resizes the short side
  and centre-crops, which would cut the sides off a wide frame, so the frame is padded to a square with
  the mean colour first (LLaVA-1.5's own "pad" preprocessing).

Chat prompts come from the checkpoint's chat template when it has one (real and tiny checkpoints do), else
from the family's fallback template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from covr_ray.errors import ConfigError
from covr_ray.prior.codecs import ActionCodec


def _pad_square(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8 with S = max(H, W), centred, padded with the mean colour."""
    h, w, _ = frame.shape
    if h == w:
        return frame
    s = max(h, w)
    mean = frame.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    out = np.empty((s, s, 3), dtype=np.uint8)
    out[:] = mean
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = frame
    return out


@dataclass(frozen=True)
class FamilySpec:
    """Prompt format and image handling of one VLM family."""

    name: str
    fallback_template: str
    """``str.format`` template with ``{text}``, used when the checkpoint has no chat template."""
    prepare_frame: Callable[[np.ndarray], np.ndarray]
    """(H, W, 3) uint8 -> (H', W', 3) uint8 as the family's processor should receive it."""


_QWEN_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")

FAMILIES: dict[str, FamilySpec] = {
    "qwen2_5_vl": FamilySpec("qwen2_5_vl", _QWEN_TEMPLATE, lambda f: f),
    "qwen2_vl": FamilySpec("qwen2_vl", _QWEN_TEMPLATE, lambda f: f),
    "llava": FamilySpec("llava", "USER: <image>\n{text} ASSISTANT:", _pad_square),
}


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family``; raises ConfigError for an unknown family."""
    if family not in FAMILIES:
        raise ConfigError("prior.family", family, "one of " + ", ".join(FAMILIES))
    return FAMILIES[family]


def build_instruction(task_prompt: str, action_description: str, codec: ActionCodec) -> str:
    """The text the VLM gets beside the frame (and the LoRA trainer's input text).

    Raises:
        ConfigError: an empty task prompt.
    """
    if not isinstance(task_prompt, str) or not task_prompt.strip():
        raise ConfigError("env.prompt", task_prompt, "a non-empty task prompt")
    parts = [task_prompt.strip()]
    if action_description and action_description.strip():
        parts.append(action_description.strip())
    parts.append(codec.format_instructions)
    return "\n".join(parts)


def check_frame(frame: Any) -> np.ndarray:
    """The frame as a (H, W, 3) uint8 array; ValueError naming what was given otherwise."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 \
            or min(frame.shape[:2]) < 1:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"prior frame is {desc}; allowed: a uint8 (H, W, 3) RGB array")
    return frame


class PromptBuilder:
    """Chat prompts and frames for one family, using the checkpoint's processor when it has a template."""

    def __init__(self, family: str, processor: Optional[Any] = None) -> None:
        self.spec = family_spec(family)
        self.processor = processor
        self._cache: dict[str, str] = {}

    @property
    def family(self) -> str:
        return self.spec.name

    def chat_prompt(self, instruction: str) -> str:
        """Prompt string with one image placeholder, ``instruction`` and the generation prompt."""
        cached = self._cache.get(instruction)
        if cached is not None:
            return cached
        template = getattr(self.processor, "chat_template", None) if self.processor is not None else None
        if template:
            from covr_ray.vlm.loader import build_chat_prompt

            prompt = build_chat_prompt(self.processor, instruction)
        else:
            prompt = self.spec.fallback_template.format(text=instruction)
        if len(self._cache) < 256:
            self._cache[instruction] = prompt
        return prompt

    def frame(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the array the family's processor receives."""
        return self.spec.prepare_frame(check_frame(frame))
