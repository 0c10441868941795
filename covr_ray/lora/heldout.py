"""The references a round's held-out fit is read against (``lora/heldout_*`` besides the VLM's own figures).

The VLM's error on the held-out rows (:meth:`covr_ray.lora.trainer.LoRATrainer.train_round`) means little
alone; each round also scores, on the same rows:

- the best constant action fitted on the training rows (:func:`covr_ray.lora.loss.constant_action_error`);
- the best constant *answer* the codec allows (:func:`covr_ray.lora.loss.constant_answer_error`);
- the codec's own round trip of ``a_r``, the floor any answer can reach;
- a linear probe of the frame's pixels fitted on the training rows (:mod:`covr_ray.lora.probe`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from covr_ray.frames import decode_frame
from covr_ray.lora.data import AnswerExamples, HeldoutSplit
from covr_ray.lora.loss import constant_references
from covr_ray.lora.probe import fit_rows, frame_probe, pixel_features


def heldout_references(examples: AnswerExamples, split: HeldoutSplit, codec: Any,
                       rng: np.random.Generator) -> dict[str, float]:
    """``lora/heldout_const_err``, ``_const_answer_err``, ``_codec_err``, ``_probe_err``,
    ``_probe_answer_err``, ``_probe_s`` (the probe's three only with at least two training rows) and the
    split's counts (``lora/heldout_rows``, ``_excluded_rows``, ``_by_episode``, ``_episodes``)."""
    targets = examples.actions[split.evaluated]
    refs = constant_references(examples.actions[split.train], targets, codec)
    out = {"lora/heldout_const_err": refs["const_err"], "lora/heldout_const_answer_err": refs["const_answer_err"],
           "lora/heldout_codec_err": refs["codec_err"],
           "lora/heldout_rows": float(len(split.evaluated)),
           "lora/heldout_excluded_rows": float(len(split.heldout)),
           "lora/heldout_by_episode": float(split.by_episode),
           "lora/heldout_episodes": float(split.episodes)}
    if len(split.train) >= 2 and len(split.evaluated):
        t0 = time.perf_counter()
        rows = fit_rows(split.train, rng)

        def features(idx: np.ndarray) -> np.ndarray:  # decoded one frame at a time: only features are kept
            return pixel_features(decode_frame(examples.frames[int(i)].as_py()) for i in idx)

        groups = [examples.episode_ids[int(i)] for i in rows] if examples.episode_ids else ["given"] * len(rows)
        probe = frame_probe(features(rows), examples.actions[rows], groups, features(split.evaluated), targets,
                            codec, rng=rng)
        out.update({"lora/heldout_probe_err": probe.err, "lora/heldout_probe_answer_err": probe.answer_err,
                    "lora/heldout_probe_s": time.perf_counter() - t0})
    return out
