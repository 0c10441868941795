"""``covr make-tiny-vlm``: a tiny random-weight VLM that the real loading code can load, with no hub access.

Model hubs are unreachable on CI and dev machines, so tests and ``make demo`` run every real code path
(transformers loading, vLLM serving, PEFT LoRA) on a tiny checkpoint built here:

- a Qwen2.5-VL (or Qwen2-VL) config with random weights: text hidden 128, 2 layers, 2 heads, 1 KV head
  (head_dim 64: vLLM's CPU attention rejects 16), mrope sections [8, 12, 12]; vision tower depth 2;
  language-model weights drawn at std 0.15 (see :data:`SHAPES` for why: a LoRA round must be able to
  teach it a frame -> answer mapping);
- a byte-level BPE tokenizer trained offline with ``tokenizers`` on a corpus covering the action
  vocabulary, digits and the prompt words, with Qwen's special tokens and chat template;
- Qwen's image processor (14 px patches, 2x2 merge: an 84x84 frame becomes 9 image tokens).

Everything is saved with ``save_pretrained``; the directory loads like ``Qwen/Qwen2.5-VL-3B-Instruct``.
``covr_tiny.json`` in it records :func:`tiny_fingerprint` (a hash of this module): caches of tiny builds
(the test suite's ``tiny_vlm_dir``) key on it, so changing a shape or a scale here rebuilds them.
Answers are random text until the model is fine-tuned: that is the point of the LoRA tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

from covr_ray.errors import ConfigError
from covr_ray.io import atomic_directory

Family = Literal["qwen2_5_vl", "qwen2_vl", "llava"]
FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl", "llava")

#: Qwen's special tokens, in Qwen's order (ids follow the trained vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

#: Qwen2-VL style chat template: an image item becomes <|vision_start|><|image_pad|><|vision_end|>.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Words the tiny tokenizer must cover compactly: the codecs' action vocabulary, digits, prompt words.
ACTION_VOCABULARY = [
    "accelerate", "keep lane", "brake", "hard brake", "coast", "maintain speed", "slow down", "speed up",
    "turn left", "turn right", "turn left slightly", "turn right slightly", "steer left", "steer right",
    "change lane left", "change lane right", "stop", "go straight", "and", "then", "action", "steer",
    "throttle", "none", "left", "right", "slightly", "sharply",
]
_PROMPT_WORDS = (
    "You control a car on a highway. Drive forward fast without collisions. Look at the image and answer "
    "with one driving action. Answer with the action vector: comma separated numbers in [-1, 1]. The task "
    "is to swing up the pole, balance, run forward, walk, spin the finger, catch the ball in the cup, hop, "
    "reach the target. Each number is the torque of one joint. What should the agent do next? "
    "pedestrian vehicle obstacle lane road traffic speed camera frame observation"
)


def _corpus() -> list[str]:
    numbers = [f"{sign}{i / 100:.2f}" for i in range(0, 101) for sign in ("", "-")]
    vectors = [", ".join(numbers[(7 * k + j) % len(numbers)] for j in range(1 + k % 6)) for k in range(400)]
    words = [" ".join(ACTION_VOCABULARY[i: i + 3]) for i in range(len(ACTION_VOCABULARY))]
    return [_PROMPT_WORDS] * 20 + ACTION_VOCABULARY * 20 + words * 10 + numbers * 5 + vectors


def train_tokenizer(vocab_size: int = 1024, special_tokens: list[str] | None = None):
    """Byte-level BPE trained offline on :func:`_corpus`; returns a ``PreTrainedTokenizerFast``.

    The byte-level alphabet means any string still encodes; the corpus makes action words and numbers
    short token sequences.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(special_tokens or QWEN_SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _qwen_tokenizer():
    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


#: Model shapes (data). ``tiny``: ~0.6 M parameters, head_dim 64; ``qwen2.5-vl-3b``: the published
#: Qwen2.5-VL-3B-Instruct dimensions (random weights), for speed and memory benchmarks on machines that
#: cannot download the real checkpoint.
#:
#: The tiny model's ``initializer_range`` decides whether LoRA can teach it anything (docs/finetune.md, "The
#: tiny VLM"). It was 0.5 until 2026-11-29: the random language model saturated (the last prompt position's
#: hidden state grew from norm 5.9 to 2,288 in the first layer and differed between frames by 1e-4 there),
#: and a LoRA round of 300 steps (rank 8, lr 2e-3) on frames whose brightness is the action answered like
#: a constant (held-out error 0.43, best constant 0.43). At 0.15 the same round reaches 0.19 after 200
#: steps, and a two-dimensional mapping 0.16 after 300 (constant 0.43). Smaller is not better: at 0.02 the
#: tied embeddings (= the output head) are so small that logits span at most ~2.6, the trained model stays
#: unsure of every answer token (answer loss 4.4-4.6 vs 1.3-1.4 at 0.15) and the untrained one answers
#: every frame with blank lines; at 0.1 it still answers three random frames alike.
SHAPES: dict[str, dict[str, dict]] = {
    "tiny": {
        "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=4096, mrope_section=[8, 12, 12],
                     initializer_range=0.15, min_vocab=0),
        "qwen2_5_vl": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=1, out_hidden_size=128,
                           fullatt_block_indexes=[1]),
        "qwen2_vl": dict(depth=2, embed_dim=64, hidden_size=128, num_heads=1, mlp_ratio=2),
    },
    "qwen2.5-vl-3b": {
        "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=2, max_position_embeddings=128000, mrope_section=[16, 24, 24],
                     initializer_range=0.02, min_vocab=151936),
        "qwen2_5_vl": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[7, 15, 23, 31]),
    },
}


def _qwen_text_config(tokenizer, vocab_size: int, dims: dict) -> dict:
    dims = dict(dims)
    mrope = dims.pop("mrope_section")
    dims.pop("min_vocab")
    return dict(
        vocab_size=vocab_size, **dims,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
        rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def qwen_config(family: str, shape: str, tokenizer: Any) -> tuple[Any, type, type]:
    """(config, model class, processor class) of a random ``family`` VLM of ``shape`` (:data:`SHAPES`)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)

    if shape not in SHAPES or family not in SHAPES[shape]:
        raise ConfigError("shape", shape, "a shape defined for family " + family + ": "
                          + ", ".join(k for k, v in SHAPES.items() if family in v))
    dims = SHAPES[shape]
    vocab_size = max(64 * ((len(tokenizer) + 63) // 64), dims["text"]["min_vocab"])
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = _qwen_text_config(tokenizer, vocab_size, dims["text"])
    if family == "qwen2_5_vl":
        vision = dict(dims["qwen2_5_vl"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      window_size=112)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        classes = (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
    else:
        vision = dict(dims["qwen2_vl"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        classes = (Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
    config.tie_word_embeddings = True
    return config, classes[0], classes[1]


def _build_qwen(out: Path, family: str, seed: int, shape: str = "tiny") -> None:
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = _qwen_tokenizer()
    config, model_cls, proc_cls = qwen_config(family, shape, tokenizer)
    text = config.text_config
    torch.manual_seed(seed)
    big = shape != "tiny"
    with torch.device("cuda" if big and torch.cuda.is_available() else "cpu"):
        model = model_cls(config).eval()
    if big:  # real-size shapes are benchmark stand-ins: store them as their real checkpoints are, bf16
        model = model.to(torch.bfloat16)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=224 * 224, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = proc_cls(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=video_processor, chat_template=QWEN_CHAT_TEMPLATE)
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)


def build_tiny_vlm(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0, shape: str = "tiny") -> Path:
    """Build a random-weight ``family`` VLM of ``shape`` (see :data:`SHAPES`) into ``out_dir``, atomically
    (the directory appears complete or not at all). Refuses to overwrite an existing directory."""
    if family not in FAMILIES:
        raise ConfigError("family", family, "one of " + ", ".join(FAMILIES))
    if shape not in SHAPES:
        raise ConfigError("shape", shape, "one of " + ", ".join(SHAPES))
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        if family == "llava":
            from covr_ray.vlm.tiny_llava import build_tiny_llava_into

            build_tiny_llava_into(tmp, seed=seed)
        else:
            _build_qwen(tmp, family, seed, shape)
        (tmp / MARKER_FILE).write_text(json.dumps({"fingerprint": tiny_fingerprint(), "family": family,
                                                   "shape": shape, "seed": seed}))
    return out


#: File of a tiny build recording what built it.
MARKER_FILE = "covr_tiny.json"


def tiny_fingerprint() -> str:
    """12 hex digits of the SHA-256 of this module's source: the shapes, scales, tokenizer corpus and
    processor settings a tiny build depends on. A cache of tiny builds keyed on it is rebuilt after any
    change here."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def built_by(out_dir: str | Path) -> dict[str, Any] | None:
    """What built the tiny model in ``out_dir`` (its :data:`MARKER_FILE`), or None when there is no complete
    tiny build there (no model, or one built before the marker existed)."""
    out = Path(out_dir)
    marker = out / MARKER_FILE
    if not (out / "config.json").is_file() or not marker.is_file():
        return None
    return json.loads(marker.read_text())


def ensure_tiny_vlm(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0, shape: str = "tiny") -> Path:
    """The tiny model in ``out_dir``, built if missing and rebuilt if a different version of this module (or
    another family, seed or shape) built it. The one rule every cache of tiny builds follows (tests, benches,
    ``make demo``). A rebuild is built beside the old directory and swapped in, so the old one stays whole
    until the new one is complete.

    Raises:
        ConfigError: ``out_dir`` holds something that is not a tiny build (a model of more than 5 M
            parameters, or other files): it is never replaced.
    """
    out = Path(out_dir)
    want = {"fingerprint": tiny_fingerprint(), "family": family, "shape": shape, "seed": seed}
    have = built_by(out)
    if have is not None and all(have.get(k) == v for k, v in want.items()):
        return out
    if not out.exists():
        return build_tiny_vlm(out, family=family, seed=seed, shape=shape)
    old_tiny = (out / "config.json").is_file() and _count_params(out) <= 5_000_000  # built before the marker
    if have is None and not old_tiny and any(out.iterdir()):
        raise ConfigError("tiny VLM directory", str(out), "a new directory or a tiny build to refresh (it holds "
                          f"something else: no {MARKER_FILE} and no model of at most 5 M parameters; left alone)")
    fresh = out.with_name(out.name + ".rebuild")
    if fresh.exists():
        shutil.rmtree(fresh)
    build_tiny_vlm(fresh, family=family, seed=seed, shape=shape)
    stale = out.with_name(out.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    out.rename(stale)
    fresh.rename(out)
    shutil.rmtree(stale)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="directory to create, or a tiny build to refresh if this module changed")
    parser.add_argument("--family", default="qwen2_5_vl", choices=FAMILIES, help="VLM family to build")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES),
                        help="tiny (tests, demo) or a real model's dimensions with random weights (benchmarks)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    have = built_by(out)
    ensure_tiny_vlm(out, family=args.family, seed=args.seed, shape=args.shape)
    if have is not None and have == built_by(out):
        print(f"{out} already holds this tiny build; nothing to do")
        return 0
    n_params = _count_params(out)
    print(f"tiny {args.family} VLM ({n_params / 1e6:.2f} M parameters) written to {out}")
    return 0


def _count_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                total += _prod(fh.get_slice(key).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
