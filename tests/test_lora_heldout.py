"""The VLM's fit per round: the held-out split (by episode, seeded, capped) and the ``lora/heldout_*`` metrics
of one round on a kept set whose actions are a learnable function of the frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from covr_ray import columns as C  # noqa: E402
from covr_ray.config import LoRASection  # noqa: E402
from covr_ray.df.shards import build_table, write_shard_set  # noqa: E402
from covr_ray.errors import ConfigError  # noqa: E402
from covr_ray.frames import encode_frame  # noqa: E402
from covr_ray.lora.data import heldout_split  # noqa: E402
from covr_ray.lora.loss import (UNPARSED_ERR, constant_action_error, constant_answer_error,  # noqa: E402
                                heldout_action_error)
from covr_ray.lora.trainer import LoRATrainer  # noqa: E402
from covr_ray.lora.versions import adapter_round_metrics  # noqa: E402
from covr_ray.prior.codecs import get_codec  # noqa: E402
from covr_ray.select.kept import kept_set_from_arrays  # noqa: E402

PROMPT = "You control a car on a highway. Drive forward fast without collisions."
HELDOUT_KEYS = ("lora/heldout_action_err_before", "lora/heldout_action_err_after", "lora/heldout_parse_frac_before",
                "lora/heldout_parse_frac_after", "lora/heldout_token_acc_before", "lora/heldout_token_acc_after",
                "lora/heldout_exact_frac_before", "lora/heldout_exact_frac_after", "lora/heldout_const_err",
                "lora/heldout_const_answer_err", "lora/heldout_codec_err", "lora/heldout_rows", "lora/heldout_excluded_rows", "lora/heldout_by_episode",
                "lora/heldout_episodes", "lora/heldout_eval_s", "lora/heldout_probe_err", "lora/heldout_probe_answer_err",
                "lora/heldout_probe_s")
EPISODES, STEPS = 12, 10  # 120 rows; 20 % = 24 rows -> 2 whole episodes (20 rows) held out


# --- the split ------------------------------------------------------------------------------------------

def _ids(sizes: list[int]) -> list[str]:
    return [f"ep{e}" for e, size in enumerate(sizes) for _ in range(size)]


def test_split_holds_out_whole_episodes_up_to_the_target():
    ids = _ids([10] * 12)
    split = heldout_split(ids, 0.2, 64, np.random.default_rng(0))
    assert split.by_episode and split.episodes == 2 and len(split.heldout) == 20  # k = 24; a third would not fit
    held_eps = {ids[i] for i in split.heldout}
    assert all(ids[i] not in held_eps for i in split.train)  # no episode on both sides
    assert sorted(np.concatenate([split.train, split.heldout]).tolist()) == list(range(120))
    assert np.array_equal(split.evaluated, split.heldout)
    again = heldout_split(ids, 0.2, 64, np.random.default_rng(0))
    assert np.array_equal(again.heldout, split.heldout)  # seeded: the same split for the same round
    other = [heldout_split(ids, 0.2, 64, np.random.default_rng(s)).heldout for s in range(1, 6)]
    assert any(not np.array_equal(o, split.heldout) for o in other)  # another round, another split


def test_split_target_cap_and_limits():
    # k = min(max_rows, max(1, round(frac * n)), n - 1)
    assert len(heldout_split(_ids([1] * 1000), 0.1, 64, np.random.default_rng(0)).heldout) == 64
    assert len(heldout_split(_ids([1] * 30), 0.1, 64, np.random.default_rng(0)).heldout) == 3
    assert len(heldout_split(_ids([1, 1]), 0.1, 64, np.random.default_rng(0)).heldout) == 1  # >= 1 row from 2 rows
    for frac, ids in ((0.0, _ids([5, 5])), (0.3, _ids([1]))):  # disabled, or a single row: no split
        split = heldout_split(ids, frac, 64, np.random.default_rng(0))
        assert len(split.heldout) == 0 and len(split.evaluated) == 0 and len(split.train) == len(ids)


def test_split_falls_back_to_rows_and_takes_the_shortest_episode():
    one = heldout_split(_ids([40]), 0.1, 64, np.random.default_rng(0))  # one episode: by row
    assert not one.by_episode and len(one.heldout) == 4 and one.episodes == 0
    long = heldout_split(_ids([40, 40, 40]), 0.1, 64, np.random.default_rng(0))  # every episode > 2 k = 24
    assert not long.by_episode and len(long.heldout) == 12
    ids = _ids([30, 20, 30, 30])  # k = 11; no episode fits, the shortest (20 <= 2 k) is taken
    short = heldout_split(ids, 0.1, 64, np.random.default_rng(0))
    assert short.by_episode and short.episodes == 1 and {ids[i] for i in short.heldout} == {"ep1"}
    capped = heldout_split(_ids([100, 100]), 0.5, 64, np.random.default_rng(0))  # k = 64: one episode of 100
    assert capped.by_episode and len(capped.heldout) == 100 and len(capped.evaluated) == 64
    assert set(capped.evaluated) <= set(capped.heldout) and len(capped.train) == 100


def test_action_error_counts_unparsable_answers_as_the_largest_error():
    codec = get_codec("driving", 2)
    targets = np.array([[0.0, 1.0], [-1.0, -1.0]])
    err = heldout_action_error(["keep lane, accelerate hard", "no idea"], targets, codec)
    assert err["parse_frac"] == 0.5 and err["exact_frac"] == 0.5
    assert err["action_err"] == pytest.approx((0 + 0 + UNPARSED_ERR + UNPARSED_ERR) / 4)
    const, const_err = constant_action_error(np.array([[0.0, 0.2], [0.4, 0.2], [1.0, -1.0]]), np.array([[0.4, 0.2]]))
    assert np.allclose(const, [0.4, 0.2]) and const_err == 0.0  # per-dimension median of the training rows


def test_best_constant_answer_is_limited_by_the_codec_like_the_vlm():
    """Training actions near 0.1 (between the driving codec's levels 0 and 1/3): the continuous median fits
    them exactly, the best constant answer is the nearest level, 'keep lane' (0) on both dims."""
    codec = get_codec("driving", 2)
    train = np.full((5, 2), 0.1) + np.linspace(-0.01, 0.01, 5)[:, None]
    held = np.full((2, 2), 0.1)
    _, const_err = constant_action_error(train, held)
    answer, answer_err = constant_answer_error(train, held, codec)
    assert const_err == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(codec.decode(answer), [0.0, 0.0]) and answer_err == pytest.approx(0.1)
    # the best answer is the best over the taught answers on the *training* rows, not the held-out ones
    train2 = np.array([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    answer2, err2 = constant_answer_error(train2, np.array([[-1.0, -1.0]]), codec)
    assert np.allclose(codec.decode(answer2), [1.0, 1.0]) and err2 == pytest.approx(2.0)
    assert constant_answer_error(np.zeros((0, 2)), held, codec)[0] == ""


def test_config_validates_the_heldout_fields():
    LoRASection(heldout_frac=0.0).validate("lora")
    for bad in (dict(heldout_frac=-0.1), dict(heldout_frac=0.6), dict(heldout_max_rows=0)):
        with pytest.raises(ConfigError, match="lora.heldout"):
            LoRASection(**bad).validate("lora")


# --- one round on a learnable kept set ------------------------------------------------------------------

def learnable_rows(seed: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames whose brightness is the action: a grey frame of brightness ``b`` -> ``[2b - 1, 1 - 2b]``
    (steer and throttle both read from the frame; the best constant is off by about 0.5)."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0, 1, n)
    frames = [np.full((84, 84, 3), int(30 + 200 * v), np.uint8) for v in b]
    return frames, np.stack([2 * b - 1, 1 - 2 * b], axis=1).astype(np.float32)


def kept_with_episodes(path: Path, frames: list[np.ndarray], actions: np.ndarray, episodes: int) -> Path:
    n = len(frames)
    rows = {C.EPISODE_ID: [f"ep{i * episodes // n}" for i in range(n)], C.STEP_INDEX: list(range(n)),
            C.FRAME_PNG: [encode_frame(f) for f in frames], C.RL_ACTION: actions, C.RETURN_TO_GO: np.zeros(n),
            C.REWARD: np.zeros(n), C.Q_VALUE: np.full(n, np.nan), C.ENTROPY: np.zeros(n), C.SAMPLE_WEIGHT: np.ones(n)}
    return write_shard_set(path, [build_table(rows, "kept", 2)], "kept", 2).path


def lora_cfg(**kw) -> LoRASection:
    base = dict(rank=8, alpha=16, dropout=0.0, learning_rate=5e-3, epochs=16, batch_size=8, max_steps=None,
                heldout_frac=0.2, heldout_max_rows=64)
    base.update(kw)
    return LoRASection(**base)


@pytest.fixture(scope="module")
def fitted(tiny_vlm_dir, tmp_path_factory, torch_one_thread_module) -> dict:
    tmp = tmp_path_factory.mktemp("heldout")
    # data seed 1: held-out error 0.15 = 0.27 of the constant's on two boxes. Seed 0 gave 0.20 on one and 0.25
    # (0.52 of the constant) on another of the same kind: 208 steps amplify the kernels' last-bit differences
    frames, actions = learnable_rows(1, EPISODES * STEPS)
    kept = kept_with_episodes(tmp / "kept", frames, actions, EPISODES)
    trainer = LoRATrainer(str(tiny_vlm_dir), lora_cfg(), "driving", 2, PROMPT, tmp / "adapters", progress=False)
    trained: list[int] = []
    step = trainer._step

    def spy(opt, params, examples, idx):  # records every row an optimizer step saw
        trained.extend(int(i) for i in idx)
        return step(opt, params, examples, idx)

    trainer._step = spy
    result = trainer.train_round(kept)
    return {"trainer": trainer, "result": result, "trained": trained, "kept": kept, "tmp": tmp}


def test_round_reports_heldout_metrics_and_never_trains_on_heldout_rows(fitted):
    m, held = fitted["result"].metrics, fitted["result"].heldout_rows
    print({k: round(v, 3) for k, v in m.items() if k.startswith("lora/heldout") or k == "lora/train_rows"})
    assert all(k in m and np.isfinite(m[k]) for k in HELDOUT_KEYS)
    assert m["lora/heldout_by_episode"] == 1 and m["lora/heldout_episodes"] == 2
    assert len(held) == m["lora/heldout_rows"] == m["lora/heldout_excluded_rows"] == 20
    assert m["lora/train_rows"] == 100 and m["lora/samples"] == 16 * 100
    assert fitted["trained"] and not set(fitted["trained"]) & set(held)
    assert set(fitted["trained"]) == set(range(120)) - set(held)  # every other row was trained on
    assert m["lora/heldout_eval_s"] > 0 and m["lora/heldout_eval_s"] < m["lora/round_s"]
    # the adapter records the round's figures: a resume that collects the round from it logs them again
    recorded = adapter_round_metrics(fitted["result"].adapter_path)
    assert all(recorded[k] == m[k] for k in HELDOUT_KEYS + ("lora/steps", "lora/loss_last", "lora/train_rows"))


def test_round_fits_the_frames_better_than_the_best_constant(fitted):
    m = fitted["result"].metrics
    assert m["lora/heldout_action_err_before"] > 1.0  # the random model's answers rarely parse
    assert m["lora/heldout_action_err_after"] < m["lora/heldout_action_err_before"]
    assert m["lora/heldout_action_err_after"] < 0.5 * m["lora/heldout_const_err"]  # answers follow the frame
    assert m["lora/heldout_const_err"] > 0.3
    assert m["lora/heldout_token_acc_after"] > m["lora/heldout_token_acc_before"]
    assert m["lora/heldout_parse_frac_after"] >= 0.9
    assert m["lora/heldout_codec_err"] <= m["lora/heldout_action_err_after"]
    assert m["lora/heldout_probe_err"] < 0.5 * m["lora/heldout_const_err"]  # the pixels show the action too


def test_heldout_frac_zero_trains_on_every_row_and_reports_no_heldout_metrics(fitted, tiny_vlm_dir,
                                                                             torch_one_thread_module):
    trainer = LoRATrainer(str(tiny_vlm_dir), lora_cfg(heldout_frac=0.0, epochs=1), "driving", 2, PROMPT,
                          fitted["tmp"] / "adapters-all", progress=False)
    result = trainer.train_round(fitted["kept"])
    m = result.metrics
    assert not [k for k in m if k.startswith("lora/heldout")] and result.heldout_rows == []
    assert m["lora/train_rows"] == 120 and m["lora/samples"] == 120  # one epoch over all rows


def test_a_round_that_trains_nothing_reports_before_as_after(tiny_vlm_dir, tmp_path, torch_one_thread_module):
    frames, actions = learnable_rows(1, 20)
    kept = kept_set_from_arrays(tmp_path / "kept", frames, actions, weights=np.zeros(20))  # one episode: by row
    trainer = LoRATrainer(str(tiny_vlm_dir), lora_cfg(heldout_frac=0.1), "driving", 2, PROMPT, tmp_path / "ad",
                          progress=False)
    result = trainer.train_round(kept)
    m = result.metrics
    assert not result.trained and m["lora/heldout_by_episode"] == 0 and len(result.heldout_rows) == 2
    for name in ("action_err", "parse_frac", "token_acc"):
        assert m[f"lora/heldout_{name}_after"] == m[f"lora/heldout_{name}_before"]
