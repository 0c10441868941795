"""``covr bench deploy``: single-observation latency and size of the exported policy (paper: 1.2 ms, 10 MB).

    covr bench deploy --json                         # paper-size network of the default DMC preset
    covr bench deploy --run runs/driving-hw-0 --format torchscript --json

Without ``--run`` the network is built from a preset's SAC section (default ``dmc-cartpole-swingup``:
9x84x84 observations, 32 filters, feature 50, hidden 1024) with seeded random weights - latency and size do
not depend on the weights' values. It is exported to a temp directory with the same code as ``covr
export`` (verified), loaded with the deploy runtime (:class:`covr_deploy.Policy`), warmed up, then
``--calls`` single-observation ``act`` calls are timed one by one. Prints ``{"p50_ms", "p99_ms",
"size_mb", "format", "device", ...}``; ``size_mb`` is the model file in MB (1e6 bytes). ``threads`` defaults
to 1 (see ``--threads``); ``"threads": null`` in the output means the backend's default.
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


def bench_deploy(preset: str = "dmc-cartpole-swingup", run_dir: Optional[str] = None, fmt: str = "onnx",
                 device: str = "cpu", calls: int = 1000, warmup: int = 100, threads: Optional[int] = 1,
                 seed: int = 0) -> dict[str, Any]:
    """Export, load with the deploy runtime, time single-observation calls. See the module docstring."""
    import numpy as np

    from covr_deploy import Policy, measure_latency
    from covr_ray.errors import ConfigError
    from covr_ray.export import export_policy

    if calls < 1:
        raise ConfigError("--calls", calls, "an integer >= 1")
    if warmup < 0:
        raise ConfigError("--warmup", warmup, "an integer >= 0")
    if threads is not None and threads < 0:
        raise ConfigError("--threads", threads, "an integer >= 0 (0 = the backend's default)")
    threads = threads or None
    if run_dir is not None:
        from covr_ray.policy_io import load_policy

        policy, meta = load_policy(run_dir)
        source = f"run {run_dir} ({meta['env_steps']} env steps)"
    else:
        policy, meta = preset_policy(preset, seed)
        source = f"preset {preset} (random weights)"
    with tempfile.TemporaryDirectory(prefix="covr-bench-deploy-") as tmp:
        out = os.path.join(tmp, "export")
        manifest = export_policy(policy, meta, out, fmt)
        runtime = Policy.load(out, device=device, num_threads=threads)
        obs = np.random.default_rng(seed).integers(0, 256, size=runtime.obs_shape, dtype=np.uint8)
        latency = measure_latency(runtime.act, obs, calls=calls, warmup=warmup)
    return {"p50_ms": round(latency["p50_ms"], 4), "p99_ms": round(latency["p99_ms"], 4),
            "mean_ms": round(latency["mean_ms"], 4), "size_mb": round(manifest["size_bytes"] / 1e6, 3),
            "format": fmt, "device": device, "threads": threads, "cpu_count": os.cpu_count(), "calls": calls,
            "warmup": warmup, "parameters": manifest["parameters"], "obs_shape": manifest["obs_shape"],
            "action_dim": manifest["action_dim"], "verify_max_abs_diff": manifest["verification"]["max_abs_diff"],
            "source": source}


def run(args: argparse.Namespace) -> int:
    result = bench_deploy(args.preset, args.run, args.format, args.device, args.calls, args.warmup,
                          args.threads, args.seed)
    print_figures(result, args.json)
    return 0
