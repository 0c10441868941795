"""A tiny random-weight LLaVA-1.5 (``LlavaForConditionalGeneration``) for tests of the ``llava`` family.

Same shape of checkpoint as ``llava-hf/llava-1.5-7b-hf`` (CLIP vision tower, MLP projector, Llama language
model, ``<image>`` placeholder, ``USER: <image>\\n... ASSISTANT:`` chat format, CLIP image processor), at
toy size:

- vision: CLIP, 56 px images, 14 px patches -> 16 image tokens (CLS dropped: ``default`` feature select),
  hidden 64, 2 layers, 1 head;
- language: Llama, hidden 128, 2 layers, 2 heads, 1 KV head (head_dim 64, which vLLM's CPU attention
  accepts);
- tokenizer: the byte-level BPE of :func:`covr_ray.vlm.tiny.train_tokenizer` with LLaVA's special tokens.

Built by ``covr make-tiny-vlm DIR --family llava`` (through :func:`covr_ray.vlm.tiny.build_tiny_vlm`).
"""

from __future__ import annotations

from pathlib import Path


#: LLaVA / Llama special tokens of the tiny tokenizer.
LLAVA_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

#: LLaVA-1.5 conversation format: images first in a user turn, answers end with ``</s>``.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] if content['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %}"
    "{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}"
    "{% endfor %}{% endif %}</s>"
    "{% elif message['role'] == 'system' %}{{ message['content'] if message['content'] is string else "
    "message['content'][0]['text'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

IMAGE_SIZE = 56
PATCH_SIZE = 14


def _tokenizer():
    from covr_ray.vlm.tiny import train_tokenizer

    tokenizer = train_tokenizer(special_tokens=LLAVA_SPECIAL_TOKENS)
    tokenizer.add_special_tokens({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
                                  "pad_token": "<pad>"})
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llava_into(out: str | Path, seed: int = 0) -> None:
    """Write a tiny LLaVA-1.5 checkpoint (weights, config, processor) into the existing directory ``out``."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _tokenizer()
    vocab_size = 64 * ((len(tokenizer) + 63) // 64)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIAL_TOKENS}
    text = dict(model_type="llama", vocab_size=vocab_size, hidden_size=128, intermediate_size=256,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                max_position_embeddings=4096, rms_norm_eps=1e-6, initializer_range=0.5,
                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=1, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64)
    n_image_tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                         image_seq_length=n_image_tokens, vision_feature_select_strategy="default",
                         vision_feature_layer=-2, projector_hidden_act="gelu")
    config.pad_token_id = ids["<pad>"]
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = ids["<s>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    model.save_pretrained(out)
    _nest_vision_tower_keys(Path(out) / "model.safetensors")
    processor.save_pretrained(out)


def _nest_vision_tower_keys(path: Path) -> None:
    """Rename ``vision_tower.X`` to ``vision_tower.vision_model.X``, the layout of the llava-hf checkpoints.

    transformers 5 flattened ``CLIPVisionModel`` and saves the short names; it still reads the nested ones
    (a prefix change on load), and vLLM reads only the nested ones.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    renamed = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.")
                and not k.startswith("vision_tower.vision_model.") else k): v for k, v in tensors.items()}
    save_file(renamed, str(path), metadata={"format": "pt"})
