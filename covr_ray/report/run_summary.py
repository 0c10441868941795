"""One run's story in both directions (``covr summary RUN_DIR``; printed at the end of ``make demo``).

From the run directory alone:

- **the policy teaches itself**: the policy network's evaluations (``eval/eval-<steps>.json``, written by
  the loop at every ``schedule.eval_every``) against the random-policy level (``eval/random.json``,
  ``covr eval --actor random``: uniform actions on the episodes of ``covr eval``) and, when measured, one
  constant action's (``eval/constant.json``, ``covr eval --actor constant --action A``);
- **the RL agent teaches the VLM**: per fine-tune round, the VLM's error on held-out episodes of the kept
  set before and after the round against the best constant action's (``lora/heldout_*`` in
  ``metrics.csv``, :meth:`covr_ray.lora.trainer.LoRATrainer.train_round`), the answer-token accuracy and
  the share of answers that parse, and a linear probe of the frame's pixels (how much of ``a_r`` one frame
  shows at all, :mod:`covr_ray.lora.probe`);
- **the VLM as a policy**: the return of each evaluated adapter version (``eval/vlm-v<N>.json``,
  ``covr eval --actor vlm --adapter all``).

Each part is empty when its files are absent (a run without the prior has no rounds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from covr_ray.metrics import read_csv_metrics
from covr_ray.run_dir import RunDir

#: Per-round held-out metrics shown (summary key -> metrics.csv key), all logged at the round's env step.
FIT_KEYS = {
    "adapter_version": "lora/adapter_version",
    "heldout_rows": "lora/heldout_rows",
    "err_before": "lora/heldout_action_err_before",
    "err_after": "lora/heldout_action_err_after",
    "const_err": "lora/heldout_const_err",
    "const_answer_err": "lora/heldout_const_answer_err",
    "codec_err": "lora/heldout_codec_err",
    "probe_err": "lora/heldout_probe_err",
    "token_acc_after": "lora/heldout_token_acc_after",
    "parse_frac_after": "lora/heldout_parse_frac_after",
}
#: The version of the adapter a round produced (``lora/adapter_version``, its fallback, is the serving one).
ROUND_VERSION_KEY = "round/adapter_version"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _episodes_summary(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("return_mean", "return_std", "episodes", "distance_m_mean", "distance_m_std")
    return {k: result[k] for k in keys if k in result}


def vlm_fit_rounds(metrics: dict[str, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """One entry per round that measured its held-out fit, in step order: ``env_steps``, the
    :data:`FIT_KEYS` values (None where a round did not log one), ``after_over_const`` and
    ``after_over_const_answer`` (below 1: the VLM answers by the frame better than a constant)."""
    at: dict[int, dict[str, list[float]]] = {}
    keys = dict(FIT_KEYS)
    if ROUND_VERSION_KEY in metrics:  # the round's own adapter (runs logged before it had the serving version only)
        keys["adapter_version"] = ROUND_VERSION_KEY
    for name, key in keys.items():
        for step, value in metrics.get(key, []):
            at.setdefault(step, {}).setdefault(name, []).append(value)
    rounds = []
    for step in sorted(at):
        for row in _rounds_at(at[step]):
            if row["adapter_version"] is not None:
                row["adapter_version"] = int(row["adapter_version"])
            if row["heldout_rows"] is not None:
                row["heldout_rows"] = int(row["heldout_rows"])
            const, answer = row["const_err"], row["const_answer_err"]
            row["after_over_const"] = row["err_after"] / const if const else None
            row["after_over_const_answer"] = row["err_after"] / answer if answer else None
            rounds.append({"round": len(rounds) + 1, "env_steps": step, **row})
    return rounds


def _rounds_at(values: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The rounds logged at one step, one per ``err_after`` value, in log order. Several can share a step (a
    resume collects the rounds done since its checkpoint at the checkpoint's step), and a key can have more
    values there than rounds (``lora/adapter_version`` is also logged by every iteration, before the round's):
    the round's own are the last ones logged, so round j of n takes value ``len - n + j`` of each key (None
    where a key has fewer)."""
    n = len(values.get("err_after", []))
    rows = []
    for j in range(n):
        row: dict[str, Any] = {}
        for name in FIT_KEYS:
            logged = values.get(name, [])
            index = len(logged) - n + j
            row[name] = logged[index] if index >= 0 else None
        rows.append(row)
    return rows


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The summary dict (see the module docstring); raises CheckpointError when ``run_dir`` is no run."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    curve = []
    for steps, path in run.eval_results():
        curve.append({"env_steps": steps, **_episodes_summary(_read_json(path))})
    random_path, constant_path = run.random_eval_result(), run.constant_eval_result()
    random = _episodes_summary(_read_json(random_path)) if random_path.is_file() else None
    constant = None
    if constant_path.is_file():
        result = _read_json(constant_path)
        constant = {**_episodes_summary(result), "action": result.get("action"), "action_text": result.get("action_text")}
    above: Optional[bool] = None
    if random is not None and curve:
        above = curve[-1]["return_mean"] > random["return_mean"]
    metrics = read_csv_metrics(run.metrics_csv) if run.metrics_csv.is_file() else {}
    vlm_policy = []
    for version, path in run.vlm_eval_results():
        result = _read_json(path)
        vlm_policy.append({"adapter_version": version, **_episodes_summary(result),
                           "queries": result.get("queries"), "parse_failures": result.get("parse_failures"),
                           "query_every": result.get("query_every"),
                           "top_answer": result.get("top_answer"), "top_answer_share": result.get("top_answer_share")})
    return {"run_dir": str(run.root), "env": cfg.env.name, "preset": cfg.preset, "seed": int(cfg.seed),
            "total_env_steps": cfg.schedule.total_env_steps, "policy_curve": curve, "random": random,
            "constant": constant,
            "final_above_random": above, "vlm_fit": vlm_fit_rounds(metrics), "vlm_policy": vlm_policy}


def _pm(entry: Optional[dict[str, Any]]) -> str:
    if not entry:
        return "-"
    return f"{entry['return_mean']:.1f} +- {entry['return_std']:.1f}"


def _num(value: Optional[float], fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_run_summary(summary: dict[str, Any]) -> str:
    """The summary as the text ``covr summary`` prints."""
    out = [f"run {summary['run_dir']}: {summary['env']} (preset {summary['preset']}, seed {summary['seed']})", ""]
    out.append("Policy network alone (mean +- std over eval episodes):")
    random = summary["random"]
    out.append(f"  {'random actions':>16}  {_pm(random)}" if random else
               "  random-policy level: not measured (covr eval RUN_DIR --actor random)")
    constant = summary.get("constant")
    if constant:
        out.append(f"  {'constant action':>16}  {_pm(constant)}   ({constant['action_text']!r}: a VLM answering "
                   "only this scores the same)")
    for point in summary["policy_curve"]:
        out.append(f"  {point['env_steps']:>10} steps  {_pm(point)}")
    if not summary["policy_curve"]:
        out.append("  no evaluations yet")
    elif random:
        diff = summary["policy_curve"][-1]["return_mean"] - random["return_mean"]
        out.append(f"  last evaluation {'above' if diff > 0 else 'NOT above'} the random level by {diff:+.1f}")
    out += ["", "VLM fit per round (held-out episodes of the kept set; action error = mean |a_VLM - a_r|, "
                "an unparsed answer counts 2):"]
    if summary["vlm_fit"]:
        out.append(f"  {'round':>5} {'steps':>7} {'adapter':>7} {'rows':>5} {'before':>6} {'after':>6} "
                   f"{'const':>6} {'const answer':>12} {'pixel probe':>11} {'codec floor':>11} {'token acc':>9} {'parsed':>6}")
        for r in summary["vlm_fit"]:
            out.append(f"  {r['round']:>5} {r['env_steps']:>7} {'v' + str(r['adapter_version']):>7} "
                       f"{_num(r['heldout_rows'], 'd'):>5} {_num(r['err_before']):>6} {_num(r['err_after']):>6} "
                       f"{_num(r['const_err']):>6} {_num(r['const_answer_err']):>12} {_num(r['probe_err']):>11} "
                       f"{_num(r['codec_err']):>11} "
                       f"{_num(r['token_acc_after']):>9} {_num(r['parse_frac_after']):>6}")
        out.append("  const: the best constant action (per-dimension median of the training rows); const answer: "
                   "the best constant answer the VLM could write; pixel probe: a ridge regression from the frame's "
                   "pixels fitted on the training rows (how much of a_r one frame shows); codec floor: the error "
                   "of a_r's own answer")
    else:
        out.append("  no round measured a held-out fit (prior off, no round yet, or lora.heldout_frac=0)")
    out += ["", "VLM alone as the policy, per adapter version (v0 = base model):"]
    if summary["vlm_policy"]:
        for v in summary["vlm_policy"]:
            same = (f"; {100 * v['top_answer_share']:.0f} % answered {v['top_answer']!r}"
                    if v.get("top_answer_share") is not None else "")
            out.append(f"  v{v['adapter_version']:<3} {_pm(v)}   ({v['parse_failures']}/{v['queries']} answers "
                       f"unparsed, a query every {v['query_every']} steps{same})")
    else:
        out.append("  not evaluated (covr eval RUN_DIR --actor vlm --adapter all)")
    return "\n".join(out) + "\n"
