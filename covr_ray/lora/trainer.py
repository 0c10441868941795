"""The LoRA trainer: fine-tunes the VLM on a round's kept samples and publishes a new adapter version.

One :class:`LoRATrainer` lives for the whole run (as a Ray actor: :mod:`covr_ray.lora.actor`). It holds the
base VLM with a PEFT LoRA adapter on the language model (``LoRASection.target_modules``, a regex over module
names; the default leaves the vision tower frozen) and keeps training the same adapter round after round,
as the paper's iterative fine-tuning does. Each round (:meth:`LoRATrainer.train_round`):

1. reads a kept shard set (EDDF-filtered, RALW-weighted rows; unreadable shards are skipped with a warning);
2. trains on ``prompt (frame + task text) -> codec text of a_r + eos`` for ``epochs`` passes (at most
   ``max_steps`` optimizer steps, and no new step once ``max_round_s`` seconds have passed since the round
   started, reading the kept set included: ``lora/budget_stopped`` = 1) with AdamW (no weight decay, gradients clipped at 1.0). The loss is the
   paper's RALW loss ``(1 / N_v) * sum_b w_b * sum_t CE_ls(y_bt)``: per-token cross-entropy with label
   smoothing on answer tokens only, each sample's sum scaled by its weight, divided by the batch's answer
   token count ``N_v`` (zero-weight samples count in ``N_v`` but add no gradient). A batch whose weights are
   all zero is skipped without a forward pass: its loss and gradient are exactly zero;
3. measures the fit on held-out rows before and after training (``lora.heldout_frac`` of the kept rows,
   whole episodes when possible, never trained on; see :meth:`LoRATrainer.train_round`);
4. saves the adapter in standard PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``) under
   ``<adapter_root>/v<version>/`` atomically, and returns its path and version for the prior service's
   ``load_adapter(path, version)`` hot-swap.

A restarted trainer resumes from the newest complete version under ``adapter_root``. The optimizer state
starts fresh each round.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from covr_ray.config import LoRASection
from covr_ray.df.shards import ShardSet, open_shard_set
from covr_ray.errors import CheckpointError, ConfigError, LoRATrainerError
from covr_ray.frames import decode_frame
from covr_ray.lora.data import IGNORE_INDEX, AnswerExamples, collate, heldout_split, load_examples
from covr_ray.lora.heldout import heldout_references
from covr_ray.lora.loss import (heldout_action_error,
                                weighted_answer_nll)
from covr_ray.lora.versions import META_FILE, adapter_path, adapter_versions
from covr_ray.io import atomic_directory, atomic_write_text
from covr_ray.log import get_logger, setup_worker_logging

log = get_logger(__name__)



@dataclass
class RoundResult:
    """What one fine-tune round produced."""

    adapter_path: Optional[str]
    """Directory of the saved adapter (PEFT format); None when no adapter exists yet (nothing trained)."""
    version: int
    """Adapter version (1, 2, ...); -1 = base model (no adapter yet)."""
    trained: bool
    """False when no optimizer step happened (empty kept set, or every weight 0): no new version."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``lora/*`` metrics of the round."""
    heldout_rows: list[int] = field(default_factory=list)
    """Rows of the kept set (in read order) held out of training this round; empty without a split."""


class LoRATrainer:
    """Base VLM + one LoRA adapter, trained round after round.

    Args:
        model: hub id or local directory of the base VLM (``prior.model``).
        lora: the LoRA section (rank, alpha, dropout, targets, lr, epochs, batch size, smoothing, cap).
        codec_name: ``driving`` or ``numeric`` (:func:`covr_ray.prior.codecs.get_codec`).
        action_dim: the env's action dimension.
        prompt_text: the task text the prior service sends with each frame (the same text, or the VLM
            learns a prompt it is never asked).
        adapter_root: where versions ``v<N>/`` are written (``<run_dir>/adapters``).
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``.
        dtype: ``auto`` (bfloat16 on cuda, float32 on cpu) or a torch dtype name; LoRA weights are float32.
        family: ``auto`` or a VLM family (see :mod:`covr_ray.vlm.loader`).
        seed: seeds the LoRA init and the data order.
        progress: show a tqdm progress bar per round.
        resume: load the newest version under ``adapter_root`` if there is one.
    """

    def __init__(self, model: str, lora: LoRASection, codec_name: str, action_dim: int, prompt_text: str,
                 adapter_root: Union[str, Path], *, device: str = "auto", dtype: str = "auto",
                 family: str = "auto", seed: int = 0, progress: bool = True, resume: bool = True) -> None:
        import torch

        setup_worker_logging()  # inside the Ray actor: its INFO lines reach the driver's log
        from peft import LoraConfig as PeftLoraConfig
        from peft import PeftModel, get_peft_model

        from covr_ray.prior.codecs import get_codec
        from covr_ray.vlm.loader import build_chat_prompt, load_hf

        lora.validate("lora")
        if not prompt_text.strip():
            raise ConfigError("prompt_text", prompt_text, "the non-empty task text the prior service sends")
        self.lora = lora
        self.codec = get_codec(codec_name, action_dim)
        self.prompt_text = prompt_text
        self.adapter_root = Path(adapter_root)
        self.seed = int(seed)
        self.progress = progress
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        torch.manual_seed(self.seed)
        base, self.processor = load_hf(model, device=self.device, dtype=dtype, family=family)
        self.prompt = build_chat_prompt(self.processor, prompt_text)
        self.model_name = model
        versions = adapter_versions(self.adapter_root) if resume else []
        if versions:
            path = adapter_path(self.adapter_root, versions[-1])
            saved = json.loads((path / "adapter_config.json").read_text())
            if (saved.get("r"), float(saved.get("lora_alpha", 0))) != (lora.rank, float(lora.alpha)):
                raise CheckpointError(f"adapter {path} has rank {saved.get('r')}, alpha {saved.get('lora_alpha')}; "
                                      f"the config asks rank {lora.rank}, alpha {lora.alpha}")
            self.model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
            self.version = versions[-1]
            log.info("LoRA trainer resumed from adapter v%d (%s)", self.version, path)
        else:
            peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                      target_modules=lora.target_modules, bias="none")
            try:
                self.model = get_peft_model(base, peft_cfg)
            except ValueError as exc:
                raise ConfigError("lora.target_modules", lora.target_modules,
                                  "a regex matching linear layers of the VLM's language model",
                                  hint=str(exc)) from exc
            self.version = -1
        self.model.to(self.device)
        self.adapted_modules = sorted({n.rsplit(".lora_", 1)[0] for n, _ in self.model.named_parameters()
                                       if ".lora_" in n})
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        self.trainable_frac = trainable / total
        self.trainable_params = trainable
        if self.trainable_frac > lora.max_trainable_frac:
            raise ConfigError("lora.rank", lora.rank, f"a rank whose trainable share is <= lora.max_trainable_frac "
                              f"({lora.max_trainable_frac:.4f})",
                              hint=f"rank {lora.rank} trains {trainable} of {total} parameters "
                                   f"({100 * self.trainable_frac:.2f} %); lower the rank or narrow target_modules")
        fwd = self.model.get_base_model().forward
        self._logits_to_keep = "logits_to_keep" in inspect.signature(fwd).parameters

    # --- one round ------------------------------------------------------------------------------------

    def train_round(self, kept_set: Union[str, Path, ShardSet], version: Optional[int] = None,
                    max_steps: Optional[int] = None) -> RoundResult:
        """Fine-tune on one kept shard set and save a new adapter version.

        **Held-out fit.** With ``lora.heldout_frac`` > 0 a share of the kept rows is kept out of training
        (:func:`covr_ray.lora.data.heldout_split`: whole episodes when the set has at least two, since an
        episode's consecutive frames are near-duplicates; single rows otherwise; at most
        ``lora.heldout_max_rows`` rows; seeded by the trainer's seed and the round's adapter version). On the
        held-out rows, before training and after it, under the same model the prior service would serve:

        - ``lora/heldout_action_err_before`` / ``_after``: greedy answers (:meth:`answers`, up to the codec's
          longest answer + 2 tokens, as the prior service budgets them) decoded with the codec; mean over
          rows and action dimensions of ``|a - a_r|``, an unparsable answer counting 2.0 (the largest
          possible error) on every dimension (:func:`covr_ray.lora.loss.heldout_action_error`);
        - ``lora/heldout_parse_frac_before`` / ``_after``: share of those answers that decode to an action;
        - ``lora/heldout_exact_frac_before`` / ``_after``: share within the codec's resolution of ``a_r``;
        - ``lora/heldout_token_acc_before`` / ``_after``: teacher-forced answer-token accuracy (the argmax
          of the next-token logits equals the target token), over all answer tokens of the rows;
        - ``lora/heldout_const_err``: the error of the best constant action fitted on the *training* rows
          (per-dimension median of their ``a_r``, unweighted like the error itself) on the held-out rows:
          the VLM has learned something from the frames only when its error is below this;
        - ``lora/heldout_const_answer_err``: the same for the best constant *answer* (one of the answers the
          round teaches, :func:`covr_ray.lora.loss.constant_answer_error`): "repeating the most useful
          answer", limited by the codec as the VLM is;
        - ``lora/heldout_codec_err``: the error of the codec's own round trip of ``a_r`` (encode, decode),
          the floor any answer can reach (the driving codec has 7 levels a dimension);
        - ``lora/heldout_probe_err`` / ``lora/heldout_probe_answer_err``: a ridge regression from the frame's
          pixels to ``a_r`` fitted on the training rows (:mod:`covr_ray.lora.probe`), scored on the same rows,
          without and with the codec's round trip: a reference for how much of ``a_r`` one frame shows (the
          probe well below the constant while the VLM sits on it: the fine-tune missed a signal; the probe at
          the constant too: one frame hardly tells the action); ``lora/heldout_probe_s`` its seconds;
        - ``lora/heldout_rows`` (evaluated), ``lora/heldout_excluded_rows``, ``lora/heldout_by_episode``,
          ``lora/heldout_episodes``, ``lora/train_rows``, ``lora/heldout_eval_s`` (both evaluations).

        The evaluations count inside ``lora.max_round_s``: training stops early enough to leave the
        evaluation after it as long as the one before took. A round that trains nothing reports the
        "before" figures as "after" too (the model did not change).

        Args:
            kept_set: a kept shard set (or its directory).
            version: version number to write; None = one more than the newest under ``adapter_root``.
            max_steps: cap on this round's optimizer steps; None = ``lora.max_steps``.

        Raises:
            ShardError: the set is incomplete (no manifest) or of the wrong kind.
            LoRATrainerError: the loss became non-finite (nothing is saved).
        """
        import torch

        round_start = time.perf_counter()
        shard_set = kept_set if isinstance(kept_set, ShardSet) else open_shard_set(Path(kept_set))
        examples, metrics = load_examples(shard_set, self.codec, self.processor.tokenizer)
        n, bs = len(examples), self.lora.batch_size
        if n == 0:
            log.warning("LoRA round: kept set %s is empty; adapter stays at version %d", shard_set.path,
                        self.version)
            return RoundResult(self._current_path(), self.version, False, {**metrics, **self._static_metrics()})
        next_version = max(self.version, 0) + 1
        split = heldout_split(examples.episode_ids or ["given"] * n, self.lora.heldout_frac,
                              self.lora.heldout_max_rows, np.random.default_rng([self.seed, next_version, 1]))
        train_rows = split.train
        heldout: dict[str, float] = {}
        reserve = 0.0  # seconds kept for the evaluation after training
        if len(split.evaluated):
            heldout, reserve = self._heldout_eval(examples, split.evaluated, "before")
        rng = np.random.default_rng(self.seed + next_version)
        batches = [train_rows[order[i:i + bs]] for _ in range(self.lora.epochs)
                   for order in [rng.permutation(len(train_rows))] for i in range(0, len(train_rows), bs)]
        cap = self.lora.max_steps if max_steps is None else max_steps
        if cap is not None:
            batches = batches[:cap]
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lora.learning_rate, weight_decay=0.0)
        losses, accs, skipped, samples, tokens = [], [], 0, 0, 0
        budget_stopped = False
        self.model.train()
        t0 = time.perf_counter()
        bar = _progress(len(batches), f"lora v{next_version}", self.progress)
        try:
            for idx in batches:
                if time.perf_counter() - round_start + reserve >= self.lora.max_round_s:
                    budget_stopped = True
                    log.warning("LoRA round: lora.max_round_s=%g s spent after %d of %d steps (%.1f s kept for "
                                "the held-out evaluation); saving what was learned", self.lora.max_round_s,
                                len(losses), len(batches), reserve)
                    break
                w = examples.weights[idx]
                if not np.any(w > 0):
                    skipped += 1
                    bar.update(1)
                    continue
                loss, acc, n_tok = self._step(opt, params, examples, idx)
                losses.append(loss)
                accs.append(acc)
                samples += len(idx)
                tokens += n_tok
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
        finally:
            bar.close()
            self.model.eval()
        elapsed = time.perf_counter() - t0
        if len(split.evaluated):
            if losses:
                after, _ = self._heldout_eval(examples, split.evaluated, "after")
                after["lora/heldout_eval_s"] += heldout.pop("lora/heldout_eval_s")
            else:  # nothing moved: the model is the one measured before
                after = {k.replace("_before", "_after"): v for k, v in heldout.items() if k.endswith("_before")}
            heldout.update(after)
            heldout.update(heldout_references(examples, split, self.codec,
                                              np.random.default_rng([self.seed, next_version, 2])))
        metrics.update(heldout)
        metrics["lora/train_rows"] = float(len(train_rows))
        heldout_list = [int(i) for i in split.heldout]
        if not losses:  # every batch had zero weight, or the budget was gone: nothing moved, no new version
            reason = (f"lora.max_round_s={self.lora.max_round_s:g} s was spent before the first step" if budget_stopped
                      else f"all {len(train_rows)} training rows have weight 0")
            log.warning("LoRA round on %s: %s; adapter stays at version %d", shard_set.path, reason, self.version)
            metrics.update(self._static_metrics())
            metrics.update({"lora/steps": 0.0, "lora/skipped_zero_weight_batches": float(skipped),
                            "lora/budget_stopped": float(budget_stopped),
                            "lora/round_s": time.perf_counter() - round_start})
            return RoundResult(self._current_path(), self.version, False, metrics, heldout_list)
        metrics.update({
            "lora/steps": float(len(losses)), "lora/skipped_zero_weight_batches": float(skipped),
            "lora/samples": float(samples), "lora/answer_tokens": float(tokens),
            "lora/loss": float(np.mean(losses)) if losses else 0.0,
            "lora/loss_first": losses[0] if losses else 0.0, "lora/loss_last": losses[-1] if losses else 0.0,
            "lora/token_acc_last": accs[-1] if accs else 0.0, "lora/time_s": elapsed,
            "lora/planned_steps": float(len(batches)), "lora/budget_stopped": float(budget_stopped),
            "lora/samples_per_s": samples / elapsed if elapsed > 0 else 0.0})
        path, new_version = self._save(version, shard_set, metrics)  # records the round's metrics with it
        metrics.update(self._static_metrics())
        metrics["lora/round_s"] = time.perf_counter() - round_start
        log.info("LoRA round: %d steps on %d rows, loss %.4f -> %.4f, adapter v%d at %s", len(losses),
                 len(train_rows), metrics["lora/loss_first"], metrics["lora/loss_last"], new_version, path)
        if heldout:
            log.info("LoRA round: held-out %d rows (%s): action error %.3f -> %.3f (best constant %.3f, best "
                     "constant answer %.3f, pixel probe %.3f, codec floor %.3f), parsed %.2f -> %.2f, token "
                     "accuracy %.2f -> %.2f",
                     len(split.evaluated), "by episode" if split.by_episode else "by row",
                     heldout["lora/heldout_action_err_before"], heldout["lora/heldout_action_err_after"],
                     heldout["lora/heldout_const_err"], heldout["lora/heldout_const_answer_err"],
                     heldout.get("lora/heldout_probe_err", float("nan")), heldout["lora/heldout_codec_err"],
                     heldout["lora/heldout_parse_frac_before"], heldout["lora/heldout_parse_frac_after"],
                     heldout["lora/heldout_token_acc_before"], heldout["lora/heldout_token_acc_after"])
        return RoundResult(str(path), new_version, True, metrics, heldout_list)

    # --- held-out fit -----------------------------------------------------------------------------------

    def _heldout_eval(self, examples: AnswerExamples, rows: np.ndarray, when: str) -> tuple[dict[str, float], float]:
        """Greedy answers and teacher-forced token accuracy of the current model on ``rows``; returns the
        ``lora/heldout_*_<when>`` metrics (plus ``lora/heldout_eval_s``) and the seconds it took."""
        import torch

        from covr_ray.vlm.loader import to_pil

        t0 = time.perf_counter()
        self.model.eval()
        bs = self.lora.batch_size
        frames = [decode_frame(examples.frames[int(i)].as_py()) for i in rows]
        answers: list[str] = []
        correct, total = 0.0, 0
        for start in range(0, len(rows), bs):
            chunk = rows[start:start + bs]
            answers += self.answers(frames[start:start + bs], max_new_tokens=self.codec.max_answer_chars + 2)
            batch = collate(self.processor, self.prompt, [to_pil(f) for f in frames[start:start + bs]],
                            [examples.answer_ids[int(i)] for i in chunk], np.ones(len(chunk), np.float32))
            with torch.no_grad():
                _loss, acc, n_tok = self.batch_loss(batch)
            correct += acc * n_tok
            total += n_tok
        err = heldout_action_error(answers, examples.actions[rows], self.codec)
        seconds = time.perf_counter() - t0
        return {f"lora/heldout_action_err_{when}": err["action_err"],
                f"lora/heldout_parse_frac_{when}": err["parse_frac"],
                f"lora/heldout_exact_frac_{when}": err["exact_frac"],
                f"lora/heldout_token_acc_{when}": correct / total if total else float("nan"),
                "lora/heldout_eval_s": seconds}, seconds

    def _step(self, opt: Any, params: list, examples: Any, idx: np.ndarray) -> tuple[float, float, int]:
        import torch

        from covr_ray.vlm.loader import to_pil

        images = [to_pil(decode_frame(examples.frames[int(i)].as_py())) for i in idx]
        batch = collate(self.processor, self.prompt, images,
                        [examples.answer_ids[int(i)] for i in idx], examples.weights[idx])
        loss, token_acc, n_tok = self.batch_loss(batch)
        if not torch.isfinite(loss):
            raise LoRATrainerError(f"LoRA loss became {loss.item()} at adapter version {self.version}; lower "
                                   f"lora.learning_rate ({self.lora.learning_rate}) or check the kept set")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.item()), token_acc, n_tok

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Any, float, int]:
        """RALW loss of a collated batch (:func:`covr_ray.lora.data.collate`) under the current
        adapter; returns ``(loss tensor, answer-token accuracy, answer tokens)``."""
        batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
        labels, weights = batch.pop("labels"), batch.pop("weights")
        width = labels.shape[1]
        starts = (labels != IGNORE_INDEX).int().argmax(dim=1)
        keep = int(width - (int(starts.min()) - 1))  # logits from the position before the first answer token
        kwargs = {"logits_to_keep": keep} if self._logits_to_keep else {}
        logits = self.model(**batch, **kwargs).logits
        logits = logits[:, -keep:] if logits.shape[1] != keep else logits
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, width - keep + 1:]
        loss, _tok, n_tok = weighted_answer_nll(shifted_logits, shifted_labels, weights, self.lora.label_smoothing)
        mask = shifted_labels != IGNORE_INDEX
        acc = float(((shifted_logits.argmax(-1) == shifted_labels) & mask).sum() / mask.sum().clamp(min=1))
        return loss, acc, int(n_tok)

    # --- inference (evaluation and tests) ---------------------------------------------------------------

    def answers(self, frames: Sequence[np.ndarray], max_new_tokens: int = 24) -> list[str]:
        """Greedy answers of the current model (base + adapter) for (H, W, 3) uint8 frames."""
        from covr_ray.vlm.loader import hf_generate

        self.model.eval()
        return hf_generate(self.model, self.processor, list(frames), [self.prompt_text] * len(frames),
                           max_new_tokens=max_new_tokens)

    def lora_state(self) -> dict[str, np.ndarray]:
        """Copies of every LoRA weight, by parameter name (for tests that check what moved)."""
        return {n: p.detach().float().cpu().numpy().copy() for n, p in self.model.named_parameters()
                if ".lora_" in n}

    # --- saving -----------------------------------------------------------------------------------------

    def _save(self, version: Optional[int], shard_set: ShardSet, metrics: dict) -> tuple[Path, int]:
        existing = adapter_versions(self.adapter_root)
        new_version = version if version is not None else (max(existing) + 1 if existing else 1)
        if new_version < 1:
            raise ConfigError("version", new_version, "an integer >= 1")
        target = adapter_path(self.adapter_root, new_version)
        if target.exists():
            raise ConfigError("version", new_version, f"a version not yet under {self.adapter_root} (have "
                              f"{existing}); adapter versions are never overwritten")
        with atomic_directory(target) as tmp:
            self.model.save_pretrained(str(tmp))
            atomic_write_text(tmp / META_FILE, json.dumps({
                "version": new_version, "base_model": self.model_name, "kept_set": str(shard_set.path),
                "rows": shard_set.rows, "codec": self.codec.name, "prompt_text": self.prompt_text,
                "trainable_frac": self.trainable_frac, "created": time.time(),
                # what the round measured (held-out fit, steps, loss): a resume that collects this round from
                # its adapter logs them again (covr_ray.lora.versions.adapter_round_metrics)
                "metrics": {k: float(v) for k, v in metrics.items()}}, indent=1))
        self.version = new_version
        return target, new_version

    def _current_path(self) -> Optional[str]:
        return str(adapter_path(self.adapter_root, self.version)) if self.version >= 1 else None

    def _static_metrics(self) -> dict[str, float]:
        return {"lora/trainable_frac": self.trainable_frac, "lora/trainable_params": float(self.trainable_params),
                "lora/adapted_modules": float(len(self.adapted_modules)),
                "lora/adapter_version": float(self.version)}

    def info(self) -> dict[str, Any]:
        """Static facts: device, trainable share, adapted modules, current version."""
        return {"device": self.device, "trainable_frac": self.trainable_frac,
                "trainable_params": self.trainable_params, "adapted_modules": list(self.adapted_modules),
                "version": self.version, "adapter_path": self._current_path()}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
