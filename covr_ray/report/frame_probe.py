"""``covr probe RUN_DIR``: how much of the RL action one frame shows, on a run's own data.

The VLM sees one frame and answers an action; it can only learn to read the frame when the actions it is
taught depend on what one frame shows. This measures that on a finished (or running) run, with the frame
probe of :mod:`covr_ray.lora.probe` (ridge regression from the frame's pixels to the action) scored by
cross-validation, every row held out once, against the best constant action and answer fitted on the same
folds:

- **per kept set** (``rounds/round-<c>-step<steps>/``, the rows each fine-tune round was taught): whole
  episodes held out, up to five folds;
- **on the final policy's own rollouts** (``--episodes N``): the deterministic action the policy network takes
  at each step of N episodes, whole episodes held out. A fixed policy, unlike a kept set that mixes the
  rows of a policy that changed during the round. The same probe on the policy's own observation (its
  stacked frames, :func:`covr_ray.lora.probe.observation_features`) beside it, on the same folds: the gap
  between the two is what one frame loses (the motion the policy reads and the VLM cannot).

A probe near the constant (ratio near 1) means one frame hardly tells the action: a VLM taught these rows
can do little better than repeat the best constant answer, whatever its size. docs/finetune.md has the
figures of the shipped presets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from covr_ray.run_dir import RunDir

#: Folds of the cross-validation (whole episodes; fewer when a set has fewer episodes).
FOLDS = 5


def _codec(cfg: Any) -> Any:
    from covr_envs.registry import load_env_spec
    from covr_ray.prior.codecs import get_codec

    spec = load_env_spec(cfg.env)
    return get_codec(cfg.env.codec or spec.codec, int(spec.action_dim))


def probe_kept_set(path: Path, codec: Any, seed: int = 0) -> dict[str, float]:
    """The cross-validated probe (:func:`covr_ray.lora.probe.cross_validated_probe`) on one kept shard set.

    Raises:
        ShardError: the set is incomplete or unreadable. ValueError: fewer than 3 rows.
    """
    from covr_ray import columns as C
    from covr_ray.df.shards import open_shard_set, read_shards
    from covr_ray.errors import ShardError
    from covr_ray.frames import decode_frame
    from covr_ray.lora.probe import cross_validated_probe, pixel_features

    shard_set = open_shard_set(path)
    table, skipped = read_shards(shard_set.shard_paths(), columns=[C.EPISODE_ID, C.FRAME_PNG, C.RL_ACTION])
    if table is None:
        raise ShardError(f"no readable shard in {path} ({len(skipped)} skipped)")
    x = pixel_features(decode_frame(png) for png in table.column(C.FRAME_PNG).to_pylist())
    actions = np.asarray(table.column(C.RL_ACTION).to_pylist(), dtype=np.float64)
    episodes = table.column(C.EPISODE_ID).to_pylist()
    return cross_validated_probe(x, actions, episodes, codec, folds=FOLDS, rng=np.random.default_rng(seed))


def probe_policy(run: RunDir, cfg: Any, codec: Any, episodes: int, seed: int) -> dict[str, Any]:
    """Roll the run's policy network (``policy/policy.pt``) for ``episodes`` episodes from ``seed`` and probe
    its deterministic actions; plus the rollouts' ``return_mean`` / ``return_std`` and ``env_steps`` (the
    policy's training steps)."""
    from covr_ray.evaluate import policy_act_fn, run_episodes
    from covr_ray.lora.probe import cross_validated_probe, observation_features, pixel_features
    from covr_ray.policy_io import load_policy

    policy, meta = load_policy(run.root)
    act = policy_act_fn(policy)
    frames: list[np.ndarray] = []
    observations: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    ids: list[str] = []
    current = [0]

    def recording(frame: np.ndarray, obs: np.ndarray) -> np.ndarray:
        action = act(frame, obs)
        frames.append(np.array(frame, copy=True))
        observations.append(np.array(obs, copy=True))
        actions.append(np.array(action, dtype=np.float64))
        ids.append(f"episode-{current[0]}")
        return action

    result, _ = run_episodes(recording, cfg.env, episodes, seed, actor_name="policy",
                             on_episode_start=lambda i: current.__setitem__(0, i))
    y = np.stack(actions)
    probe = cross_validated_probe(pixel_features(frames), y, ids, codec, folds=FOLDS, rng=np.random.default_rng(seed))
    # The same folds (same seed) on the policy's own input: what the frame loses of it (the stacked frames' motion).
    own = cross_validated_probe(observation_features(observations), y, ids, codec, folds=FOLDS,
                                rng=np.random.default_rng(seed))
    return {**probe, "episodes": episodes, "seed": seed, "env_steps": int(meta.get("env_steps", -1)),
            "return_mean": result["return_mean"], "return_std": result["return_std"],
            "observation": {**own, "shape": list(np.shape(observations[0]))}}


def probe_run(run_dir: str | Path, episodes: int = 0, seed: Optional[int] = None) -> dict[str, Any]:
    """``{"run_dir", "kept_sets": [per round: round, env_steps, and the probe's figures], "policy": ... or
    None}``. A kept set that cannot be read or is too small is listed with its ``error``.

    Raises:
        CheckpointError: ``run_dir`` is no run; ``episodes`` > 0 without a policy artifact.
        ConfigError: bad ``episodes`` / ``seed``.
    """
    from covr_ray.errors import CheckpointError, CovrError
    from covr_ray.evaluate import check_episodes_seed, eval_seed

    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    seed = eval_seed(cfg) if seed is None else seed
    if episodes:
        check_episodes_seed(episodes, seed)
        if not run.policy.is_file():  # before any kept set is read
            raise CheckpointError(f"{run.policy} does not exist: --episodes rolls the run's policy network; "
                                  "it is written at the run's first checkpoint")
    codec = _codec(cfg)
    kept = []
    for index, steps, path in run.round_dirs():
        entry: dict[str, Any] = {"round": index + 1, "env_steps": steps, "path": str(path)}
        try:
            entry.update(probe_kept_set(path, codec, seed=index))
        except (CovrError, ValueError, OSError) as exc:
            entry["error"] = str(exc)
        kept.append(entry)
    policy = probe_policy(run, cfg, codec, episodes, seed) if episodes else None
    return {"run_dir": str(run.root), "kept_sets": kept, "policy": policy}


def _row(name: str, r: dict[str, Any]) -> str:
    return (f"  {name:<24} {int(r['rows']):>5} {int(r['groups']):>8} {r['probe_err']:>6.3f} {r['const_err']:>6.3f} "
            f"{r['probe_over_const']:>7.2f} {r['probe_answer_err']:>12.3f} {r['const_answer_err']:>12.3f} "
            f"{r['codec_err']:>11.3f}")


def format_probe(report: dict[str, Any]) -> str:
    """The text ``covr probe`` prints."""
    out = [f"frame probe of {report['run_dir']} (ridge regression from a frame's pixels to the RL action; every "
           "row held out once, whole episodes; mean |a - a_r|):",
           f"  {'rows of':<24} {'rows':>5} {'episodes':>8} {'probe':>6} {'const':>6} {'p/const':>7} "
           f"{'probe answer':>12} {'const answer':>12} {'codec floor':>11}"]
    for r in report["kept_sets"]:
        name = f"round {r['round']} (step {r['env_steps']})"
        out.append(f"  {name:<24} {r['error']}" if "error" in r else _row(name, r))
    if not report["kept_sets"]:
        out.append("  no kept set under rounds/ (prior off, or no round yet)")
    p = report["policy"]
    if p is not None:
        out.append(_row(f"policy, {p['episodes']} episodes", p))
        shape = "x".join(str(d) for d in p["observation"]["shape"])
        out.append(_row(f"  its input {shape}", p["observation"]))
        out.append(f"  (the policy at {p['env_steps']} env steps: return {p['return_mean']:.1f} +- "
                   f"{p['return_std']:.1f}, episodes from seed {p['seed']})")
    out.append("  p/const near 1: one frame hardly tells the action (a VLM taught these rows can do little "
               "better than repeat one answer)")
    if p is not None:
        out.append("  its input: the same probe on the policy's own input (its stacked frames); below the "
                   "frame's row, the action depends on what one frame does not show (the motion)")
    return "\n".join(out) + "\n"
