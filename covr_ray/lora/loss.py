"""The RALW loss of a LoRA round and the accuracy of decoded answers.

The paper's RALW loss is ``(1 / N_v) * sum_b w_b * sum_t CE_ls(y_bt)``: per-token cross-entropy with label
smoothing on answer tokens only, each sample's sum scaled by its RALW weight, divided by the batch's
answer-token count ``N_v`` (zero-weight samples count in ``N_v`` but add no gradient).
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
