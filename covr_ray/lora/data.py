"""Training examples for the LoRA trainer: kept shard rows -> (prompt with frame, answer text, weight).

Each kept row becomes one supervised example: the prompt is the chat prompt the prior service sends (one
image, the task text, the generation prompt: :func:`covr_ray.vlm.loader.build_chat_prompt`), the answer is
the action codec's canonical text for the RL action ``a_r`` followed by the tokenizer's end-of-sequence
token (so the model learns to stop), and the weight is the row's RALW weight.

Answer tokens are tokenized on their own and appended to the prompt tokens, so the label boundary is exact
(no BPE merge across prompt and answer). Batches are right-padded; ``labels`` are -100 everywhere except
the answer tokens.

:func:`heldout_split` picks the rows a round keeps out of training to measure the VLM's fit on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from covr_ray import columns as C
from covr_ray.errors import FinetuneDataError, ShardError
from covr_ray.df.shards import ShardSet, read_shards

IGNORE_INDEX = -100


@dataclass
class AnswerExamples:
    """The kept rows of one round, ready to batch.

    Attributes:
        frames: Arrow binary array of N PNG frames (kept compact; decoded per batch).
        actions: (N, action_dim) float32 a_r.
        answers: N target texts (the codec's text of a_r).
        answer_ids: N token-id lists, answer + eos.
        weights: (N,) float32 RALW weights.
        episode_ids: N episode ids (the held-out split keeps an episode's near-duplicate frames together).
    """

    frames: pa.Array
    actions: np.ndarray
    answers: list[str]
    answer_ids: list[list[int]]
    weights: np.ndarray
    episode_ids: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.answers)


def load_examples(shard_set: ShardSet, codec: Any, tokenizer: Any) -> tuple[AnswerExamples, dict[str, float]]:
    """Read a kept shard set (skipping unreadable shards with a warning) and build its examples.

    Args:
        shard_set: a kept set (:func:`covr_ray.df.shards.open_shard_set`).
        codec: the env's action codec (``encode(action) -> str``).
        tokenizer: the VLM's tokenizer (needs ``eos_token_id``).

    Returns:
        ``(examples, metrics)``; metrics ``lora/rows``, ``lora/skipped_shards``, ``lora/answer_tokens_mean``.
    """
    if shard_set.kind != "kept":
        raise ShardError(f"shard set {shard_set.path} is of kind {shard_set.kind!r}; the trainer reads 'kept' sets")
    if tokenizer.eos_token_id is None:
        raise FinetuneDataError("the VLM's tokenizer has no eos token; the answer could not end")
    table, skipped = read_shards(shard_set.shard_paths(),
                                 columns=[C.EPISODE_ID, C.FRAME_PNG, C.RL_ACTION, C.SAMPLE_WEIGHT], kind="kept")
    if table is None:
        table = pa.table({C.EPISODE_ID: pa.array([], pa.string()), C.FRAME_PNG: pa.array([], pa.binary()),
                          C.RL_ACTION: pa.array([], pa.list_(pa.float32())),
                          C.SAMPLE_WEIGHT: pa.array([], pa.float32())})
    n = table.num_rows
    actions = np.asarray(table.column(C.RL_ACTION).to_pylist(), dtype=np.float32).reshape(n, -1)
    weights = table.column(C.SAMPLE_WEIGHT).to_numpy(zero_copy_only=False).astype(np.float32)
    if n and (not np.all(np.isfinite(weights)) or np.any(weights < 0)):
        raise FinetuneDataError(f"kept set {shard_set.path}: sample weights must be finite and >= 0 "
                                f"(got min {np.nanmin(weights) if np.isfinite(weights).any() else 'nan'}, "
                                f"{int((~np.isfinite(weights)).sum())} non-finite); was it written by build_kept_set?")
    answers = [codec.encode(a) for a in actions]
    eos = int(tokenizer.eos_token_id)
    answer_ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos] for text in answers]
    frames = table.column(C.FRAME_PNG).combine_chunks()
    metrics = {"lora/rows": float(n), "lora/skipped_shards": float(len(skipped)),
               "lora/answer_tokens_mean": float(np.mean([len(a) for a in answer_ids])) if n else 0.0}
    episode_ids = [str(e) for e in table.column(C.EPISODE_ID).to_pylist()]
    return AnswerExamples(frames, actions, answers, answer_ids, weights, episode_ids), metrics


@dataclass
class HeldoutSplit:
    """Which kept rows a round trains on and which it holds out (indices into the round's examples).

    Attributes:
        train: rows trained on, ascending.
        heldout: rows kept out of training, ascending.
        evaluated: the held-out rows evaluated (all of ``heldout``, or a seeded subsample of
            ``max_rows`` of them when whole episodes gave more).
        by_episode: True when whole episodes were held out, False when single rows were.
        episodes: held-out episodes (0 for a split by row).
    """

    train: np.ndarray
    heldout: np.ndarray
    evaluated: np.ndarray
    by_episode: bool
    episodes: int


def heldout_split(episode_ids: Sequence[str], frac: float, max_rows: int, rng: np.random.Generator) -> HeldoutSplit:
    """Hold out a share of a round's kept rows, by episode when it can be done at about that share.

    The target is ``k = min(max_rows, max(1, round(frac * n)), n - 1)`` rows (no split when ``frac`` is 0
    or ``n < 2``). Consecutive frames of an episode are near-duplicates, so a split by row would measure
    memorisation: with at least two episodes, whole episodes are held out instead. The episodes are visited
    in a seeded random order and each one is taken if it still fits in ``k`` rows; if none fits (every
    episode is longer than ``k``), the shortest episode (the first of the random order among equals) is
    taken when it has at most ``2 k`` rows and leaves another episode for training. Only when neither gives
    a split (one episode, or every episode longer than ``2 k``) are ``k`` single rows drawn at random.

    Args:
        episode_ids: the episode of each row.
        frac: share to hold out (``lora.heldout_frac``).
        max_rows: cap on held-out rows (``lora.heldout_max_rows``); also caps the evaluated rows.
        rng: the round's generator (the trainer seeds it from its seed and the round's adapter version).
    """
    n = len(episode_ids)
    all_rows = np.arange(n)
    empty = np.zeros(0, dtype=np.int64)
    if frac <= 0 or n < 2:
        return HeldoutSplit(all_rows, empty, empty, False, 0)
    k = int(min(max_rows, max(1, round(frac * n)), n - 1))
    ids = np.asarray(list(episode_ids), dtype=object)
    episodes = list(dict.fromkeys(ids.tolist()))
    held = empty
    taken: list[str] = []
    if len(episodes) >= 2:
        sizes = {e: int((ids == e).sum()) for e in episodes}
        order = [episodes[i] for i in rng.permutation(len(episodes))]
        count = 0
        for e in order:
            if count + sizes[e] <= k:
                taken.append(e)
                count += sizes[e]
        if not taken:
            shortest = min(order, key=lambda e: sizes[e])  # min keeps the first of equals in `order`
            if sizes[shortest] <= 2 * k:
                taken = [shortest]
        if taken:
            held = np.flatnonzero(np.isin(ids, np.asarray(taken, dtype=object)))
    by_episode = bool(taken)
    if not by_episode:
        held = np.sort(rng.choice(n, size=k, replace=False))
    train = np.setdiff1d(all_rows, held)
    evaluated = held if len(held) <= max_rows else np.sort(rng.choice(held, size=max_rows, replace=False))
    return HeldoutSplit(train, held.astype(np.int64), evaluated.astype(np.int64), by_episode, len(taken))


def collate(processor: Any, prompt: str, images: Sequence[Any], answer_ids: Sequence[Sequence[int]],
            weights: Sequence[float]) -> dict[str, Any]:
    """One training batch as torch tensors.

    Args:
        processor: the VLM's processor (tokenizer + image processor).
        prompt: the chat prompt string (with the model's image placeholder), the same for every row.
        images: B PIL images.
        answer_ids: B answer token lists (ending in eos).
        weights: B sample weights.

    Returns:
        The processor's image tensors (e.g. Qwen: ``pixel_values`` (sum of patches, D), ``image_grid_thw``
        (B, 3); LLaVA: ``pixel_values`` (B, 3, H, W)) plus ``input_ids`` (B, L) int64, ``attention_mask``
        (B, L) int64, ``labels`` (B, L) int64 (-100 outside answers), ``weights`` (B,) float32.
    """
    import torch

    tok = processor.tokenizer
    saved_side = tok.padding_side
    tok.padding_side = "right"
    try:
        enc = processor(text=[prompt] * len(images), images=list(images), return_tensors="pt", padding=True)
    finally:
        tok.padding_side = saved_side
    prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
    total = [p + len(a) for p, a in zip(prompt_lens, answer_ids)]
    width = max(total)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(images), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(images), width), dtype=torch.long)
    labels = torch.full((len(images), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, ans) in enumerate(zip(prompt_lens, answer_ids)):
        answer = torch.tensor(list(ans), dtype=torch.long)
        ids[i, :p] = enc["input_ids"][i, :p]
        ids[i, p:p + len(ans)] = answer
        mask[i, :p + len(ans)] = 1
        labels[i, p:p + len(ans)] = answer
    batch: dict[str, Any] = {}
    for key, value in enc.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if torch.is_tensor(value) and value.shape == enc["input_ids"].shape:
            # per-token side inputs (e.g. mm_token_type_ids): answer tokens are text, 0
            wide = torch.zeros((len(images), width), dtype=value.dtype)
            wide[:, :value.shape[1]] = value * enc["attention_mask"].to(value.dtype)
            value = wide
        batch[key] = value
    batch.update(input_ids=ids, attention_mask=mask, labels=labels,
                 weights=torch.tensor(np.asarray(weights, dtype=np.float32)))
    return batch
