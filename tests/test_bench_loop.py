"""``covr bench loop``: its env-rate half against a live prior service (the tiny VLM, transformers backend),
and its typed refusal of bad sizes before anything starts. The two timed ``covr train`` runs are the bench
itself (by hand; README has its figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from covr_ray.bench.loop import env_rates
from covr_ray.cli import main
from covr_ray.config import load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_env_rates_alternate_blocks_and_the_wrapped_env_queries_the_live_service(ray_session: None,
                                                                                 tiny_vlm_dir: Path) -> None:
    cfg = load_config("smoke", [f"prior.model={tiny_vlm_dir}", "prior.backend=transformers", "prior.prior_every=2",
                                "env.image_size=32"])
    out = env_rates(cfg, steps=24, timeout_s=300, repeats=2)
    assert len(out["blocks_off"]) == len(out["blocks_on"]) == 2
    assert out["off"] > 0 and out["on"] > 0
    # the rates are totals over the blocks: between the slowest and the fastest block of each side
    for side in ("off", "on"):
        assert min(out[f"blocks_{side}"]) - 0.1 <= out[side] <= max(out[f"blocks_{side}"]) + 0.1
    # the service answered the wrapped env before the timing (the warm-up waits for it), and every prior step
    # of the on-blocks went to the client: a query sent, or skipped while one was in flight (on a loaded
    # machine one answer can take longer than the short blocks)
    assert out["prior_client_warmup"]["answered"] >= 1, out["prior_client_warmup"]
    client = out["prior_client"]
    # prior_every=2: at least 12 prior steps in each of the 2 on-blocks of 24 steps (an episode's first step counts)
    assert client["sent"] + client["skipped_busy"] >= 24, client
    assert out["prior_answers_per_s"] is not None and out["prior_answers_per_s"] > 0


@pytest.mark.parametrize("flag", ["--steps", "--env-steps", "--env-repeats"])
def test_bad_sizes_are_refused_by_name_before_anything_starts(flag: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "loop", flag, "0", "--model", "/nonexistent-model-dir"]) != 0
    assert f"'{flag}': got 0" in capsys.readouterr().err
