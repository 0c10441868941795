"""``covr bench deploy``: single-observation latency, size and action error of the exported policy, float vs
quantized in one run (paper: 1.2 ms, 10 MB).

    covr bench deploy --json                         # paper-size network of the default DMC preset, int8 vs float
    covr bench deploy --quantize fp16 --json
    covr bench deploy --quantize none --json         # the float artifact alone
    covr bench deploy --run runs/driving-hw-0 --json

Without ``--run`` the network is built from a preset's SAC section (default ``dmc-cartpole-swingup``:
9x84x84 observations, 32 filters, feature 50, hidden 1024) with seeded random weights - latency and size do
not depend on the weights' values (the action error does: a trained policy's may differ). The float model is
exported with the same code as ``covr export`` (verified); with ``--quantize`` (default ``int8``) the
quantized one too, calibrated and checked on ``--observations`` observations recorded by a deterministic
rollout of the preset's (or run's) env with the policy (:func:`covr_ray.export.record_observations`). Both are
loaded with the deploy runtime (:class:`covr_deploy.Policy`), warmed up, then ``--calls`` single-observation
``act`` calls each are timed one by one, float and quantized alternating in 10 blocks so that a change in the
machine's load hits both alike.

Prints ``{"p50_ms", "p99_ms", "mean_ms", "size_mb", "quantize", "action_err_max", "action_err_mean",
"max_action_err", "within_bound", "float": {"p50_ms", "p99_ms", "mean_ms", "size_mb"}, "p50_ratio",
"size_ratio", ...}``: the top-level figures are the quantized artifact's (the float one's with ``--quantize
none``); ``size_mb`` is the model file in MB (1e6 bytes); the action errors are max / mean abs differences
from the torch policy's actions over the recorded observations, ``max_action_err`` the stated bound
(``--max-action-err``, default per mode) and ``within_bound`` whether ``covr export`` would accept it (the bench
reports, it does not refuse). ``threads`` defaults to 1 (``--threads``); ``"threads": null`` means the
backend's default.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any, Optional

from covr_ray.bench import print_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="dmc-cartpole-swingup",
                        help="preset whose network is benched (default dmc-cartpole-swingup, 9x84x84)")
    parser.add_argument("--run", default=None, help="bench this run's policy (RUN_DIR/policy/policy.pt) instead")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--quantize", choices=("none", "fp16", "int8"), default="int8",
                        help="quantized artifact benched against the float one (default int8; none = float only)")
    parser.add_argument("--max-action-err", type=float, default=None,
                        help="stated action error bound reported as within_bound (default: fp16 0.01, int8 0.05)")
    parser.add_argument("--observations", type=int, default=64,
                        help="observations recorded from the env for calibration and the action error")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--calls", type=int, default=1000, help="timed single-observation calls")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the runtime (default 1: a single small observation gains little "
                             "from more, and they contend with simulators on the same cores); 0 = backend default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def preset_policy(preset: str, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The paper-size policy network of ``preset`` with seeded random weights, and its meta."""
    import torch

    from covr_envs.registry import load_env_spec
    from covr_ray.config import load_config
    from covr_ray.policy_io import policy_meta
    from covr_ray.rl.networks import NetworkSpec, build_policy

    cfg = load_config(preset)
    action_dim = load_env_spec(cfg.env).action_dim
    spec = NetworkSpec(obs_shape=(3 * cfg.env.frame_stack, cfg.env.image_size, cfg.env.image_size),
                       action_dim=action_dim, feature_dim=cfg.sac.feature_dim, hidden_dim=cfg.sac.hidden_dim,
                       num_filters=cfg.sac.num_filters)
    torch.manual_seed(seed)
    policy = build_policy(spec)
    return policy, {**policy_meta(cfg, env_steps=0, action_dim=action_dim), "network": spec.to_dict()}


def _interleaved_latency(acts: list[Any], obs: Any, calls: int, warmup: int, blocks: int = 10) -> list[dict[str, float]]:
    """Time ``calls`` single calls of each of ``acts``, alternating in ``blocks`` blocks; stats per act."""
    import time

    import numpy as np

    for act in acts:
        for _ in range(warmup):
            act(obs)
    times = [np.empty(calls, dtype=np.float64) for _ in acts]
    edges = np.linspace(0, calls, min(blocks, calls) + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        for act, out in zip(acts, times):
            for i in range(lo, hi):
                start = time.perf_counter_ns()
                act(obs)
                out[i] = (time.perf_counter_ns() - start) / 1e6
    return [{"p50_ms": round(float(np.percentile(t, 50)), 4), "p99_ms": round(float(np.percentile(t, 99)), 4),
             "mean_ms": round(float(t.mean()), 4)} for t in times]


def bench_deploy(preset: str = "dmc-cartpole-swingup", run_dir: Optional[str] = None, fmt: str = "onnx",
                 device: str = "cpu", calls: int = 1000, warmup: int = 100, threads: Optional[int] = 1,
                 seed: int = 0, quantize: str = "none", max_action_err: Optional[float] = None,
                 observations: int = 64) -> dict[str, Any]:
    """Export, load with the deploy runtime, time single-observation calls. See the module docstring."""
    import numpy as np

    from covr_deploy import Policy
    from covr_ray.errors import ConfigError
    from covr_ray.export import check_quantize, export_policy, record_observations

    if calls < 1:
        raise ConfigError("--calls", calls, "an integer >= 1")
    if warmup < 0:
        raise ConfigError("--warmup", warmup, "an integer >= 0")
    if threads is not None and threads < 0:
        raise ConfigError("--threads", threads, "an integer >= 0 (0 = the backend's default)")
    bound = check_quantize(quantize, fmt, max_action_err, observations)
    threads = threads or None
    if run_dir is not None:
        from covr_ray.policy_io import load_policy
        from covr_ray.run_dir import RunDir

        policy, meta = load_policy(run_dir)
        source = f"run {run_dir} ({meta['env_steps']} env steps)"
        env_cfg = RunDir(run_dir).read_config().env if quantize != "none" else None
    else:
        from covr_ray.config import load_config

        policy, meta = preset_policy(preset, seed)
        source = f"preset {preset} (random weights)"
        env_cfg = load_config(preset).env
    with tempfile.TemporaryDirectory(prefix="covr-bench-deploy-") as tmp:
        paths = {"float": os.path.join(tmp, "float"), "quantized": os.path.join(tmp, "quantized")}
        manifest = float_manifest = export_policy(policy, meta, paths["float"], fmt)
        if quantize != "none":
            recorded = record_observations(policy.eval(), env_cfg, observations, seed)
            # bound 2.0 (the widest possible): the bench reports the error; `covr export` enforces the bound
            manifest = export_policy(policy, meta, paths["quantized"], fmt, quantize=quantize, observations=recorded,
                                     max_action_err=2.0, observations_source=f"rollout of {env_cfg.name}, seed {seed}")
        names = ["quantized", "float"] if quantize != "none" else ["float"]
        runtimes = [Policy.load(paths[n], device=device, num_threads=threads) for n in names]
        obs = np.random.default_rng(seed).integers(0, 256, size=runtimes[0].obs_shape, dtype=np.uint8)
        stats = _interleaved_latency([r.act for r in runtimes], obs, calls, warmup)
    float_fig = {**stats[-1], "size_mb": round(float_manifest["size_bytes"] / 1e6, 3),
                 "verify_max_abs_diff": float_manifest["verification"]["max_abs_diff"]}
    result: dict[str, Any] = {**stats[0], "size_mb": round(manifest["size_bytes"] / 1e6, 3), "quantize": quantize}
    if quantize != "none":
        q = manifest["quantization"]
        result.update({"action_err_max": q["action_err_max"], "action_err_mean": q["action_err_mean"],
                       "action_err_max_held_out": q["action_err_max_held_out"], "max_action_err": bound,
                       "within_bound": q["action_err_max"] <= bound, "observations": q["observations"],
                       "method": q["method"], "float": float_fig,
                       "p50_ratio": round(stats[0]["p50_ms"] / stats[-1]["p50_ms"], 3),
                       "size_ratio": round(manifest["size_bytes"] / float_manifest["size_bytes"], 3)})
    result.update({"format": fmt, "device": device, "threads": threads, "cpu_count": os.cpu_count(),
                   "calls": calls, "warmup": warmup, "parameters": manifest["parameters"],
                   "obs_shape": manifest["obs_shape"], "action_dim": manifest["action_dim"],
                   "verify_max_abs_diff": float_manifest["verification"]["max_abs_diff"], "source": source})
    return result


def run(args: argparse.Namespace) -> int:
    result = bench_deploy(args.preset, args.run, args.format, args.device, args.calls, args.warmup,
                          args.threads, args.seed, args.quantize, args.max_action_err, args.observations)
    print_figures(result, args.json)
    return 0
