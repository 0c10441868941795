"""The RALW loss of a LoRA round and the accuracy of decoded answers.

The paper's RALW loss is ``(1 / N_v) * sum_b w_b * sum_t CE_ls(y_bt)``: per-token cross-entropy with label
smoothing on answer tokens only, each sample's sum scaled by its RALW weight, divided by the batch's
answer-token count ``N_v`` (zero-weight samples count in ``N_v`` but add no gradient).

:func:`heldout_action_error` and :func:`constant_action_error` are the held-out fit metrics of a round
(``lora/heldout_*``, see :meth:`covr_ray.lora.trainer.LoRATrainer.train_round`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from covr_ray.lora.data import IGNORE_INDEX


def weighted_answer_nll(logits: Any, labels: Any, weights: Any, label_smoothing: float) -> tuple[Any, Any, Any]:
    """The RALW loss of one batch.

    Args:
        logits: (B, T, V) float, ``logits[:, t]`` predicts ``labels[:, t]`` (already shifted).
        labels: (B, T) int64, -100 outside answer tokens.
        weights: (B,) float sample weights w_b.
        label_smoothing: epsilon of the label-smoothed cross-entropy.

    Returns:
        ``(loss, token_nll, n_tokens)``: loss = ``sum_b w_b sum_t CE(b, t) / N_v`` (scalar), token_nll =
        (B, T) per-token loss (0 outside answers), n_tokens = N_v.
    """
    import torch.nn.functional as F

    b, t, v = logits.shape
    tok = F.cross_entropy(logits.float().reshape(b * t, v), labels.reshape(b * t), ignore_index=IGNORE_INDEX,
                          reduction="none", label_smoothing=label_smoothing).view(b, t)
    n_tokens = (labels != IGNORE_INDEX).sum()
    loss = (tok.sum(dim=1) * weights.to(tok.dtype)).sum() / n_tokens.clamp(min=1)
    return loss, tok, n_tokens


def answer_accuracy(answers: Sequence[str], targets: np.ndarray, codec: Any) -> dict[str, float]:
    """How close decoded answers are to target actions.

    Args:
        answers: N texts.
        targets: (N, action_dim) float actions.

    Returns:
        ``parsed_frac`` (share that decode to an action), ``mean_abs_err`` (mean |a - target| over parsed
        answers and dimensions; 2.0, the largest possible, when none parse), ``exact_frac`` (share within the
        codec's resolution on every dimension).
    """
    decoded = [codec.decode(a) for a in answers]
    ok = [d is not None for d in decoded]
    errs = [np.abs(d - t) for d, t in zip(decoded, np.asarray(targets)) if d is not None]
    return {"parsed_frac": float(np.mean(ok)) if ok else 0.0,
            "mean_abs_err": float(np.mean(errs)) if errs else 2.0,
            "exact_frac": float(np.mean([bool(np.all(e <= codec.resolution + 1e-6)) for e in errs] +
                                        [False] * (len(ok) - len(errs)))) if ok else 0.0}


#: What an answer that decodes to no action counts as, per dimension: the largest |a - a_r| in [-1, 1].
UNPARSED_ERR = 2.0


def heldout_action_error(answers: Sequence[str], targets: np.ndarray, codec: Any) -> dict[str, float]:
    """Error of decoded answers against target actions, every answer counted.

    Unlike :func:`answer_accuracy` (whose error averages over parsed answers only), an answer that decodes
    to no action counts as :data:`UNPARSED_ERR` (2.0, the largest possible error) on every dimension, so a
    model cannot look accurate by answering rarely.

    Args:
        answers: N texts.
        targets: (N, action_dim) float actions (the RL actions ``a_r``, not their codec round trip).

    Returns:
        ``action_err`` (mean over answers and dimensions of ``|decode(answer) - target|``, 2.0 for an
        unparsable answer), ``parse_frac`` (share of answers that decode), ``exact_frac`` (share within the
        codec's resolution on every dimension). NaN for N = 0.
    """
    targets = np.asarray(targets, dtype=np.float64)
    if len(answers) == 0:
        return {"action_err": float("nan"), "parse_frac": float("nan"), "exact_frac": float("nan")}
    errs = np.full(targets.shape, UNPARSED_ERR)
    parsed = np.zeros(len(answers), bool)
    for i, text in enumerate(answers):
        decoded = codec.decode(text)
        if decoded is not None:
            errs[i] = np.abs(decoded.astype(np.float64) - targets[i])
            parsed[i] = True
    exact = parsed & np.all(errs <= codec.resolution + 1e-6, axis=1)
    return {"action_err": float(errs.mean()), "parse_frac": float(parsed.mean()), "exact_frac": float(exact.mean())}


def constant_action_error(train_actions: np.ndarray, heldout_actions: np.ndarray) -> tuple[np.ndarray, float]:
    """The best constant action for the training rows and its error on the held-out rows.

    For the mean absolute error the best constant is the per-dimension median of the training actions
    (unweighted, as the held-out error is; it need not be one of the codec's answers, so no constant answer
    the VLM can write does better on the training rows).

    Returns:
        ``(constant (action_dim,), mean |heldout - constant| over rows and dimensions)``.
    """
    const = np.median(np.asarray(train_actions, dtype=np.float64), axis=0)
    return const, float(np.mean(np.abs(np.asarray(heldout_actions, dtype=np.float64) - const)))


def constant_answer_error(train_actions: np.ndarray, heldout_actions: np.ndarray, codec: Any) -> tuple[str, float]:
    """The best constant *answer* for the training rows and its error on the held-out rows: "repeating the
    most useful answer", the baseline a VLM's fit must beat to show it answers by the frame.

    The candidates are the answers the round teaches (the codec's canonical answer of each training action);
    the best one has the least mean absolute error over the training rows. Unlike
    :func:`constant_action_error` it is limited by the codec's resolution exactly as the VLM is (with the
    7-level driving codec the continuous median can beat every answer the VLM can write).

    Returns:
        ``(answer text, mean |heldout - decode(answer)| over rows and dimensions)``; ``("", nan)`` without
        training rows.
    """
    train = np.asarray(train_actions, dtype=np.float64)
    if len(train) == 0:
        return "", float("nan")
    answers = sorted({codec.encode(a) for a in train})
    values = np.stack([np.asarray(codec.decode(text), dtype=np.float64) for text in answers])
    train_err = np.abs(train[None, :, :] - values[:, None, :]).mean(axis=(1, 2))
    best = int(np.argmin(train_err))
    held = np.asarray(heldout_actions, dtype=np.float64)
    return answers[best], float(np.mean(np.abs(held - values[best])))



def constant_references(train_actions: np.ndarray, heldout_actions: np.ndarray, codec: Any) -> dict[str, float]:
    """The three frame-blind references of a held-out fit: ``const_err`` (:func:`constant_action_error`),
    ``const_answer_err`` (:func:`constant_answer_error`) and ``codec_err`` (the error of the codec's own round
    trip of the held-out actions, the floor of any answer)."""
    held = np.asarray(heldout_actions)
    return {"const_err": constant_action_error(train_actions, held)[1],
            "const_answer_err": constant_answer_error(train_actions, held, codec)[1],
            "codec_err": heldout_action_error([codec.encode(a) for a in held], held, codec)["action_err"]}
