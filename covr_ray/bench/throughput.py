"""``covr bench throughput``: end-to-end agent steps/s of the base algorithm, ``covr train`` vs one process.

Both paths run the base algorithm (``prior.enabled=false``: SAC/RAD, no VLM) on the same preset, sizes and
training ratio (``sac.updates_per_step`` updates per agent step), sampling and updates included:

- **distributed**: ``covr train``'s own path, :class:`~covr_ray.loop.orchestrator.CovrRun` (``setup`` then
  ``run(stop_at_env_steps=...)``): RLlib's ``CovrSAC`` from :func:`~covr_ray.rl.algo.build_algorithm_config`,
  ``ray.num_env_runners`` remote env runners, the learner in the driver, the metrics sink; once per value of
  ``--num-env-runners``;
- **single process**: :class:`~covr_ray.rl.plain_train.PlainLoop`: the same env (action repeat, frame
  stack, image size), the same compact replay and uniform 1-step sampling, the same networks, augmentation
  and update (:mod:`covr_ray.rl.plain`, checked against the RLlib learner by ``tests/test_rl_bench.py``),
  the same warm-up and ratio, one agent step then its updates, no Ray.

Steady state only: each path first runs its uniform warm-up (``sac.learning_starts`` agent steps) and
``--skip-iterations`` RLlib iterations' worth of steps, untimed. Then blocks of ``--steps`` agent steps
(rounded up to whole RLlib iterations of the largest runner count) alternate between the two paths,
``--repeats`` times per runner count, in this one process tree, so a change of the machine's load hits
both alike. ``distributed_over_single_process`` = distributed agent steps/s over single-process agent
steps/s at the preset's ``ray.num_env_runners`` (or the first value of ``--num-env-runners`` when it is
not among them); ``per_env_runners`` gives the ratio for every value. Both paths' agent steps and updates
in the timed blocks are reported (they are equal by construction; the unit test checks it).

Default sizes (``DEFAULT_SETS``, stated in the output, each overridable with ``--set``) make one run take a
few minutes on the 2-core box: batch 64, hidden 256, replay 10 K, warm-up 64 agent steps, learner on the
CPU (no GPU asks; ``--set ray.num_gpus_learner=1`` puts both paths' updates on the GPU). The paper's
sizes: ``--set sac.batch_size=128 --set sac.hidden_dim=1024``.

How to run::

    covr bench throughput --json                                   # dmc-cartpole-swingup, runners 1,2,4
    covr bench throughput --json --num-env-runners 2 --set sac.batch_size=128 --set sac.hidden_dim=1024

Results to expect: see docs/learner.md, "Throughput" (figures with the machine, date and load average).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Optional

from covr_ray.bench import print_figures

#: bench defaults applied before the user's ``--set`` (which win): small enough for minutes on 2 cores.
DEFAULT_SETS = ["sac.batch_size=64", "sac.hidden_dim=256", "sac.buffer_capacity=10000", "sac.learning_starts=64",
                "ray.num_gpus_learner=0", "ray.num_gpus_prior=0", "ray.num_gpus_lora=0"]
#: settings the bench always applies: the base algorithm, nothing but training in the timed loop.
FIXED_SETS = ["prior.enabled=false", "schedule.total_env_steps=1000000000", "schedule.eval_every=1000000000",
              "schedule.checkpoint_every=1000000000", "logging.wandb=false", "logging.tensorboard=false"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="dmc-cartpole-swingup", help="preset of both paths")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable; wins over the bench's default sizes)")
    parser.add_argument("--steps", type=int, default=32,
                        help="agent steps per timed block (rounded up to whole RLlib iterations)")
    parser.add_argument("--repeats", type=int, default=2, help="timed blocks per path and runner count")
    parser.add_argument("--skip-iterations", type=int, default=2,
                        help="untimed RLlib iterations after the warm-up (the single process skips as many steps)")
    parser.add_argument("--num-env-runners", default="1,2,4", help="comma-separated ray.num_env_runners values")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process, both paths (default: covr train's learner threads, "
                             "ray.learner_threads)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")


def _runner_counts(text: str) -> list[int]:
    from covr_ray.errors import ConfigError

    try:
        counts = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError("--num-env-runners", text, "comma-separated integers >= 1, e.g. 1,2,4")
    return counts


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Distributed:
    """``covr train``'s path for one runner count: a :class:`CovrRun` advanced ``agent_steps`` at a time."""

    def __init__(self, cfg: Any) -> None:
        from covr_ray.loop.orchestrator import CovrRun

        self.repeat = cfg.env.action_repeat
        self.job = CovrRun.new(cfg, progress=False).setup()

    @property
    def agent_steps(self) -> int:
        return self.job.env_steps // self.repeat

    def updates(self) -> int:
        from covr_ray.rl.algo import num_updates

        return num_updates(self.job.algo)

    def advance(self, agent_steps: int) -> None:
        self.job.run(stop_at_env_steps=(self.agent_steps + agent_steps) * self.repeat)

    def close(self) -> None:
        self.job.close()


def _single(loop: Any, agent_steps: int) -> None:
    for _ in range(agent_steps):
        loop.step()


def run_bench(preset: str = "dmc-cartpole-swingup", overrides: Optional[list[str]] = None, steps: int = 32,
              repeats: int = 2, skip_iterations: int = 2, runner_counts: Optional[list[int]] = None,
              threads: Optional[int] = None) -> dict[str, Any]:
    """Time both paths (module docstring); returns the figures. Starts a local Ray sized for the largest
    runner count unless Ray is already initialised."""
    import ray
    import torch

    from covr_ray.config import load_config
    from covr_ray.errors import ConfigError

    runner_counts = runner_counts or [1, 2, 4]
    for name, value, lo in (("--steps", steps, 1), ("--repeats", repeats, 1), ("--skip-iterations", skip_iterations, 0)):
        if value < lo:
            raise ConfigError(name, value, f"an integer >= {lo}")
    sets = DEFAULT_SETS + list(overrides or []) + FIXED_SETS
    base = load_config(preset, sets)  # a bad preset or override fails here, before Ray starts
    if threads is None:  # what covr train's learner gets (ray.learner_threads), for both paths alike
        from covr_ray.rl.algo import learner_threads

        threads = learner_threads(base)
    if threads is not None:
        torch.set_num_threads(threads)
        sets = sets + [f"ray.learner_threads={threads}"]  # CovrRun.setup keeps this process's threads
        base = load_config(preset, sets)
    s = base.sac
    per_iter = s.rollout_fragment_length * base.ray.num_envs_per_env_runner
    block = -(-steps // (per_iter * max(runner_counts))) * per_iter * max(runner_counts)
    load_before = round(os.getloadavg()[0], 2)
    ray_cpus, ray_tmp = None, None
    if not ray.is_initialized():  # own temp dir: no stale cluster file of another session is picked up
        ray_cpus = max(os.cpu_count() or 1, max(runner_counts) * int(-(-base.ray.num_cpus_per_env_runner // 1)))
        ray_tmp = tempfile.mkdtemp(prefix="covr_ray_", dir="/tmp")
        ray.init(num_cpus=ray_cpus, _temp_dir=ray_tmp, include_dashboard=False, log_to_driver=False)
    try:
        return _measure(preset, sets, base, block, per_iter, steps, repeats, skip_iterations, runner_counts,
                        overrides, load_before, ray_cpus)
    finally:
        if ray_tmp is not None:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)


def _measure(preset: str, sets: list[str], base: Any, block: int, per_iter: int, steps: int, repeats: int,
             skip_iterations: int, runner_counts: list[int], overrides: Optional[list[str]], load_before: float,
             ray_cpus: Optional[int]) -> dict[str, Any]:
    import torch

    from covr_ray.config import load_config
    from covr_ray.rl.plain_train import PlainLoop

    s = base.sac
    started = time.perf_counter()

    from covr_ray.rl.algo import learner_uses_gpu

    single = PlainLoop(base, device="cuda" if learner_uses_gpu(base) else "cpu")  # where the learner runs
    _single(single, s.learning_starts + skip_iterations * per_iter * max(runner_counts))

    per_runners: dict[str, Any] = {}
    totals = {"d_steps": 0, "d_updates": 0, "s_steps": 0, "s_updates": 0}
    with tempfile.TemporaryDirectory(prefix="covr-bench-throughput-") as tmp:
        for k in runner_counts:
            cfg = load_config(preset, sets + [f"ray.num_env_runners={k}", f"run_dir={tmp}/runners-{k}"])
            dist = _Distributed(cfg)
            try:
                dist.advance(s.learning_starts + skip_iterations * per_iter * k)  # warm-up + skipped iterations
                d_s = s_s = 0.0
                d_steps = d_updates = s_steps = s_updates = 0
                for _ in range(repeats):  # alternating blocks: single process, then distributed
                    st0, su0 = single.agent_steps, single.updates
                    s_s += _timed(lambda: _single(single, block))
                    s_steps += single.agent_steps - st0
                    s_updates += single.updates - su0
                    dt0, du0 = dist.agent_steps, dist.updates()
                    d_s += _timed(lambda: dist.advance(block))
                    d_steps += dist.agent_steps - dt0
                    d_updates += dist.updates() - du0
                d_rate, s_rate = d_steps / d_s, s_steps / s_s
                per_runners[str(k)] = {
                    "distributed_over_single_process": round(d_rate / s_rate, 3),
                    "agent_steps_per_s_distributed": round(d_rate, 3),
                    "agent_steps_per_s_single_process": round(s_rate, 3),
                    "agent_steps": {"distributed": d_steps, "single_process": s_steps},
                    "updates": {"distributed": d_updates, "single_process": s_updates},
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
                totals = {"d_steps": totals["d_steps"] + d_steps, "d_updates": totals["d_updates"] + d_updates,
                          "s_steps": totals["s_steps"] + s_steps, "s_updates": totals["s_updates"] + s_updates}
            finally:
                dist.close()
    main_k = base.ray.num_env_runners if base.ray.num_env_runners in runner_counts else runner_counts[0]
    main = per_runners[str(main_k)]
    return {
        "distributed_over_single_process": main["distributed_over_single_process"],
        "agent_steps_per_s_distributed": main["agent_steps_per_s_distributed"],
        "agent_steps_per_s_single_process": main["agent_steps_per_s_single_process"],
        "num_env_runners": main_k,
        "per_env_runners": per_runners,
        "preset": preset,
        "steps_per_block": block,
        "repeats": repeats,
        "agent_steps": {"distributed": totals["d_steps"], "single_process": totals["s_steps"]},
        "updates": {"distributed": totals["d_updates"], "single_process": totals["s_updates"]},
        "sizes": {"batch_size": s.batch_size, "hidden_dim": s.hidden_dim, "feature_dim": s.feature_dim,
                  "num_filters": s.num_filters, "image_size": base.env.image_size,
                  "frame_stack": base.env.frame_stack, "action_repeat": base.env.action_repeat,
                  "updates_per_step": s.updates_per_step, "rollout_fragment_length": s.rollout_fragment_length,
                  "learning_starts": s.learning_starts, "base": s.base},
        "overrides": sets[:len(DEFAULT_SETS) + len(overrides or [])],
        "torch_threads": torch.get_num_threads(),
        "ray_num_cpus": ray_cpus,
        "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def run(args: argparse.Namespace) -> int:
    figures = run_bench(args.preset, args.overrides, args.steps, args.repeats, args.skip_iterations,
                        _runner_counts(args.num_env_runners), args.threads)
    print_figures(figures, args.json)
    return 0
