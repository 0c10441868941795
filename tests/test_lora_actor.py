"""The LoRA trainer as a Ray actor (with timeouts and typed errors) and `covr bench lora --json`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covr_ray.cli import main
from covr_ray.config import LoRASection, RaySection
from covr_ray.errors import LoRATrainerError, ShardError
from covr_ray.select.kept import kept_set_from_arrays


def test_bench_lora_prints_json(tiny_vlm_dir, capsys):
    rc = main(["bench", "lora", "--json", "--model", str(tiny_vlm_dir), "--rows", "4", "--steps", "1",
               "--warmup", "0", "--threads", "1"])
    assert rc == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"samples_per_s", "trainable_frac", "device"} <= figures.keys()
    assert figures["samples_per_s"] > 0 and 0 < figures["trainable_frac"] < 0.0826
    assert figures["device"] == "cpu" and figures["steps"] == 1


@pytest.mark.slow
def test_actor_round_timeout_and_typed_errors(tiny_vlm_dir, tmp_path, ray_session):
    """Ray actor: a round returns a new version; a bad set comes back as ShardError; a timeout as
    LoRATrainerError. Slow (Ray start + model load in the actor, about 40 s on the 2-core box)."""
    from covr_ray.lora.actor import start_lora_trainer, train_round_remote

    actor = start_lora_trainer(RaySection(num_gpus_lora=0, max_actor_restarts=0), model=str(tiny_vlm_dir),
                               lora=LoRASection(rank=8, alpha=16, batch_size=2, max_steps=2), codec_name="driving",
                               action_dim=2, prompt_text="Drive.", adapter_root=str(tmp_path / "adapters"),
                               progress=False)
    frames = list(np.random.default_rng(0).integers(0, 256, (4, 84, 84, 3), dtype=np.uint8))
    kept = kept_set_from_arrays(tmp_path / "kept", frames, np.zeros((4, 2)))
    result = train_round_remote(actor, kept.path, timeout_s=300)
    assert result.trained and result.version == 1 and result.metrics["lora/steps"] == 2
    with pytest.raises(ShardError, match="incomplete"):
        train_round_remote(actor, tmp_path / "nothing", timeout_s=300)
    with pytest.raises(LoRATrainerError, match="did not finish within"):
        train_round_remote(actor, kept.path, timeout_s=0.01)
