"""``covr eval RUN_DIR``: evaluate a run's policy network alone (no VLM, no Ray) on the run's env.

    covr eval runs/driving-hw-0 --episodes 10 --video --json

Reads ``<run_dir>/config.yaml`` and ``<run_dir>/policy/policy.pt``, runs deterministic actions, prints
episode return mean +- std, episode length and, for driving envs, driving distance (metres), and writes
``<run_dir>/eval/eval-<env_steps>.json`` (and ``video-<env_steps>.mp4|gif`` with ``--video``).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds config.yaml and policy/policy.pt)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (paper: 10)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of episode 0 (episode i uses seed + i); default: run seed + 100000")
    parser.add_argument("--video", action="store_true", help="write the first episode as a video under eval/")
    parser.add_argument("--video-format", choices=("auto", "mp4", "gif"), default="auto",
                        help="auto = mp4 when imageio-ffmpeg is installed, else gif")
    parser.add_argument("--fps", type=float, default=15.0, help="video frames per second")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.evaluate import evaluate_run

    result, path = evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed, video=args.video,
                                video_format=args.video_format, fps=args.fps)
    result["json_path"] = str(path)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    print(f"{result['env']} policy at {result['env_steps']} env steps, {result['episodes']} episodes "
          f"(seed {result['seed']}):")
    print(f"  episode return   {result['return_mean']:.1f} +- {result['return_std']:.1f}")
    print(f"  episode length   {result['length_mean']:.1f} +- {result['length_std']:.1f} agent steps")
    if "distance_m_mean" in result:
        print(f"  driving distance {result['distance_m_mean']:.1f} +- {result['distance_m_std']:.1f} m")
    if result.get("video"):
        print(f"  video            {result['video']}")
    print(f"  written to       {path}")
    return 0
