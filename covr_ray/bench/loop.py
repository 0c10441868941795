"""``covr bench loop``: what COVR costs on top of its base algorithm, for the same env steps.

- ``covr_over_base_wallclock``: wall time of :meth:`CovrRun.run` with the prior service, D_f recording
  and LoRA rounds, over the same run with ``prior.enabled=false`` (plain SAC/RAD), same preset, seed and
  env steps. Actor start-up (engine load) is excluded: it is paid once per run, not per step.
- ``env_rate_prior_on_over_off``: agent steps per second of one env wrapped in the prior client (querying a
  live prior service every ``prior.prior_every`` steps, never blocking) over the bare env, in
  ``--env-repeats`` alternating blocks of ``--env-steps`` each (``env_rate_blocks_off`` / ``_on``), after an
  untimed warm-up that lasts until the service has answered once; with the service's answers per second and
  median latency beside it, and the client's counts over the timed blocks (``prior_client``).

Targets (:data:`TARGETS`): <= 1.15 and >= 0.95, on a quiet machine. The output states what was measured and
under which conditions: ``preset``, ``steps`` (env steps of each run), ``env_rate_agent_steps``,
``async_rounds`` (``schedule.async_rounds`` of the COVR run), its ``rounds`` and ``learner_stall_s`` (the
sum of ``loop/learner_stall_s`` over its rounds), ``load_avg_1m`` before and after and ``cpus``: on the
shared 2-core box the ratios move with the load. Default model: the tiny local VLM (built into ``.cache/``
if missing).

How to run: ``covr bench loop --json`` (smoke preset, 300 env steps; about 3-5 minutes on the 2-core box).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from covr_ray.bench import print_figures

#: figure -> (comparison, target).
TARGETS = {"covr_over_base_wallclock": ("<=", 1.15), "env_rate_prior_on_over_off": (">=", 0.95)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="smoke", help="preset of both runs (default smoke)")
    parser.add_argument("--model", help="VLM for the prior (default: the tiny local build)")
    parser.add_argument("--steps", type=int, default=300, help="env steps of each run")
    parser.add_argument("--env-steps", type=int, default=300, help="agent steps of each env-rate block")
    parser.add_argument("--env-repeats", type=int, default=3,
                        help="env-rate blocks per side (bare, prior on), alternating")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")


def _tiny_model() -> str:
    from covr_ray.vlm.tiny import ensure_tiny_vlm

    return str(ensure_tiny_vlm(Path(".cache") / "tiny-qwen2_5_vl"))


def _timed_run(cfg: Any) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``CovrRun.run`` (setup excluded) and the run's round figures."""
    from covr_ray.loop.orchestrator import CovrRun

    job = CovrRun.new(cfg, progress=False).setup()
    try:
        t0 = time.perf_counter()
        job.run()
        wall = time.perf_counter() - t0
        return wall, {"rounds": float(job.schedule.round),
                      "learner_stall_s": sum(h.get("loop/learner_stall_s", 0.0) for h in job.history)}
    finally:
        job.close()


def _round(value: Any, digits: int) -> Any:
    return None if value is None else round(float(value), digits)


def _env_block_s(env: Any, steps: int, seed: int) -> float:
    """Seconds for ``steps`` random-action agent steps of ``env`` (reset first, untimed)."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        _obs, _r, terminated, truncated, _info = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - t0


def env_rates(cfg: Any, steps: int, timeout_s: float, repeats: int = 3) -> dict[str, Any]:
    """Bare env steps/s and steps/s with the prior client querying a live service: after an untimed
    warm-up of each, ``repeats`` timed blocks of ``steps`` agent steps alternate between the two (a change
    of the machine's load hits both alike); the rates are totals over the blocks. The warm-up of the wrapped env
    lasts until the service has answered it once. Also the service's own figures over the run (answers per
    second, latency), the other side of the trade, and the client's counts over the timed blocks
    (``prior_client``; ``prior_client_warmup``: before them)."""
    import ray

    from covr_envs.registry import make_env_from_config, resolve_env_spec
    from covr_ray.prior.client import PriorWrapper
    from covr_ray.prior.service import start_prior_service

    spec = resolve_env_spec(cfg.env)
    bare = make_env_from_config(cfg.env, cfg.seed)
    with tempfile.TemporaryDirectory() as adapters:
        run_id = f"bench-{int(time.time())}"
        service = start_prior_service(cfg, run_id=run_id, adapter_dir=adapters, codec=spec.codec,
                                      action_dim=spec.action_dim, task_prompt=spec.prompt,
                                      action_description=spec.action_description)
        try:
            ray.get(service.info.remote(), timeout=timeout_s)
            wrapped = PriorWrapper.from_config(make_env_from_config(cfg.env, cfg.seed), cfg, run_id=run_id,
                                               worker_index=0, action_dim=spec.action_dim)
            for env in (bare, wrapped):  # untimed: first resets, first queries, caches
                _env_block_s(env, min(steps, 50), cfg.seed)
            _until_first_answer(wrapped, timeout_s, cfg.seed)  # the timed blocks exclude the first answer's wait
            warm = _client_counts(wrapped)
            blocks: dict[str, list[float]] = {"off": [], "on": []}
            for i in range(repeats):
                for key, env in (("off", bare), ("on", wrapped)) if i % 2 == 0 else (("on", wrapped), ("off", bare)):
                    blocks[key].append(_env_block_s(env, steps, cfg.seed + 1 + i))
            served = ray.get(service.metrics.remote(), timeout=timeout_s)
        finally:
            ray.kill(service, no_restart=True)
    return {"off": steps * repeats / sum(blocks["off"]), "on": steps * repeats / sum(blocks["on"]),
            "blocks_off": [round(steps / b, 1) for b in blocks["off"]],
            "blocks_on": [round(steps / b, 1) for b in blocks["on"]],
            "prior_answers_per_s": served.get("prior/qps"), "prior_latency_p50_ms": served.get("prior/latency_p50_ms"),
            "prior_client_warmup": warm,
            "prior_client": {k: v - warm[k] for k, v in _client_counts(wrapped).items()}}


_CLIENT_COUNTS = ("sent", "answered", "skipped_busy", "timeouts", "errors")


def _client_counts(wrapped: Any) -> dict[str, float]:
    stats = wrapped.prior_stats()
    return {k: stats.get(f"prior_client/{k}", 0.0) for k in _CLIENT_COUNTS}


def _until_first_answer(wrapped: Any, timeout_s: float, seed: int) -> None:
    """Step the prior-wrapped env (untimed) until the service has answered it once; a service that does not
    answer within ``timeout_s`` is an error, not a rate."""
    from covr_ray.errors import PriorServiceError

    deadline = time.monotonic() + timeout_s
    while _client_counts(wrapped)["answered"] < 1:
        if time.monotonic() > deadline:
            raise PriorServiceError(f"the prior service answered none of the env's queries within {timeout_s} s "
                                    f"(client counts {_client_counts(wrapped)})")
        _env_block_s(wrapped, 10, seed)


def run(args: argparse.Namespace) -> int:
    import ray

    from covr_ray.config import load_config
    from covr_ray.errors import ConfigError

    for name, value in (("--steps", args.steps), ("--env-steps", args.env_steps), ("--env-repeats", args.env_repeats)):
        if value < 1:
            raise ConfigError(name, value, "an integer >= 1")
    model = args.model or _tiny_model()
    common = [f"prior.model={model}", f"schedule.total_env_steps={args.steps}", "schedule.eval_every=1000000000",
              "schedule.checkpoint_every=1000000000", "schedule.eval_episodes=1", "logging.wandb=false",
              "logging.tensorboard=false", *args.overrides]
    load_config(args.preset, common)  # a bad preset or override fails here, before Ray starts
    load_avg_before = round(os.getloadavg()[0], 2)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="covr-bench-loop-") as tmp:
        covr_cfg = load_config(args.preset, common + [f"run_dir={tmp}/covr"])
        base_cfg = load_config(args.preset, common + [f"run_dir={tmp}/base", "prior.enabled=false"])
        covr_s, covr_rounds = _timed_run(covr_cfg)
        base_s, _ = _timed_run(base_cfg)
    rates = env_rates(covr_cfg, args.env_steps, covr_cfg.ray.get_timeout_s, repeats=args.env_repeats)
    off, on = rates["off"], rates["on"]
    out: dict[str, Any] = {
        "preset": args.preset, "steps": args.steps, "env_rate_agent_steps": args.env_steps,
        "covr_over_base_wallclock": round(covr_s / base_s, 3), "env_rate_prior_on_over_off": round(on / off, 3),
        "covr_wall_s": round(covr_s, 1), "base_wall_s": round(base_s, 1),
        "async_rounds": covr_cfg.schedule.async_rounds, "rounds": int(covr_rounds["rounds"]),
        "learner_stall_s": round(covr_rounds["learner_stall_s"], 2),
        "env_steps_per_s_prior_off": round(off, 1), "env_steps_per_s_prior_on": round(on, 1),
        "env_rate_repeats": args.env_repeats, "env_rate_blocks_off": rates["blocks_off"],
        "env_rate_blocks_on": rates["blocks_on"], "prior_answers_per_s": _round(rates["prior_answers_per_s"], 2),
        "prior_latency_p50_ms": _round(rates["prior_latency_p50_ms"], 1), "prior_client": rates["prior_client"],
        "load_avg_1m_before": load_avg_before, "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "model": model}
    for key, (op, target) in TARGETS.items():
        out[f"{key}_target"] = f"{op} {target}"
        out[f"{key}_met"] = bool(out[key] <= target if op == "<=" else out[key] >= target)
    print_figures(out, args.json)
    return 0
