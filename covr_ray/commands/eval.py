"""``covr eval RUN_DIR``: evaluate a run's policy network alone (no VLM, no Ray), or its VLM alone as the policy.

    covr eval runs/driving-hw-0 --episodes 10 --video --json
    covr eval runs/driving-hw-0 --actor vlm --adapter all --json      # one JSON line per adapter version

``--actor policy`` (default) reads ``<run_dir>/config.yaml`` and ``<run_dir>/policy/policy.pt``, runs
deterministic actions, prints episode return mean +- std, episode length and, for driving envs, driving
distance (metres), and writes ``<run_dir>/eval/eval-<env_steps>.json`` (and ``video-<env_steps>.mp4|gif``
with ``--video``).

``--actor vlm`` drives the env with the run's VLM (the prior service's backend, in this process): one query
every ``prior.prior_every`` agent steps, the action held in between (``--every-frame``: a query every
step), for the base model (``--adapter v0``), one adapter version (``v<N>``) or all of them (``all``),
writing ``<run_dir>/eval/vlm-v<N>.json`` per version (:mod:`covr_ray.vlm.policy`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from covr_ray.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds config.yaml and policy/policy.pt)")
    parser.add_argument("--actor", choices=("policy", "vlm", "random", "constant"), default="policy",
                        help="policy: the policy network alone; vlm: the run's VLM alone, its parsed answers "
                             "as actions; random: uniform random actions (the level a learning curve must "
                             "rise above), written to eval/random.json; constant: --action every step (eval/constant.json)")
    parser.add_argument("--action", default=None,
                        help="with --actor constant: comma-separated numbers in [-1, 1] or an answer of the run's "
                             "codec, e.g. 'keep lane, accelerate slightly'")
    parser.add_argument("--adapter", default=None,
                        help="with --actor vlm: all (default: v0 = base model, then every adapters/v<N>), v0 "
                             "or v<N>")
    parser.add_argument("--every-frame", action="store_true",
                        help="with --actor vlm: query the VLM every agent step (default: every prior.prior_every "
                             "steps, the action held in between)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (paper: 10)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of episode 0 (episode i uses seed + i); default: run seed + 100000")
    parser.add_argument("--video", action="store_true", help="write the first episode as a video under eval/")
    parser.add_argument("--video-format", choices=("auto", "mp4", "gif"), default="auto",
                        help="auto = mp4 when imageio-ffmpeg is installed, else gif")
    parser.add_argument("--fps", type=float, default=15.0, help="video frames per second")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (--actor vlm: one JSON line per adapter version)")


def _print_common(result: dict[str, Any]) -> None:
    print(f"  episode return   {result['return_mean']:.1f} +- {result['return_std']:.1f}")
    print(f"  episode length   {result['length_mean']:.1f} +- {result['length_std']:.1f} agent steps")
    if "distance_m_mean" in result:
        print(f"  driving distance {result['distance_m_mean']:.1f} +- {result['distance_m_std']:.1f} m")
    if result.get("video"):
        print(f"  video            {result['video']}")
    print(f"  written to       {result['json_path']}")


def _run_vlm(args: argparse.Namespace) -> int:
    from covr_ray.vlm.policy import evaluate_vlm

    def show(result: dict[str, Any], path: Any) -> None:
        result["json_path"] = str(path)
        if args.json:
            print(json.dumps(result, sort_keys=True), flush=True)
            return
        print(f"{result['env']} VLM adapter v{result['adapter_version']} ({result['backend']}), "
              f"{result['episodes']} episodes (seed {result['seed']}), a query every {result['query_every']} "
              "steps:")
        _print_common(result)
        print(f"  VLM answers      {result['queries']} queries, {result['parse_failures']} unparsed", flush=True)

    evaluate_vlm(args.run_dir, adapter=args.adapter or "all", episodes=args.episodes, seed=args.seed,
                 every=1 if args.every_frame else None, video=args.video, video_format=args.video_format,
                 fps=args.fps, on_result=show)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action is not None and args.actor != "constant":
        raise ConfigError("--action", args.action, "only with --actor constant")
    if args.actor == "vlm":
        return _run_vlm(args)
    for flag, value in (("--adapter", args.adapter), ("--every-frame", args.every_frame or None)):
        if value is not None:
            raise ConfigError(flag, value, "only with --actor vlm")
    from covr_ray.evaluate import evaluate_baseline, evaluate_run

    if args.actor == "policy":
        result, path = evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed, video=args.video,
                                    video_format=args.video_format, fps=args.fps)
    else:
        result, path = evaluate_baseline(args.run_dir, args.actor, episodes=args.episodes, seed=args.seed,
                                         action=args.action, video=args.video, video_format=args.video_format,
                                         fps=args.fps)
    result["json_path"] = str(path)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    who = {"random": "uniform random actions",
           "constant": f"constant action {result.get('action')} ({result.get('action_text')!r})"}.get(
        args.actor, f"policy at {result.get('env_steps')} env steps")
    print(f"{result['env']} {who}, {result['episodes']} episodes (seed {result['seed']}):")
    _print_common(result)
    return 0
