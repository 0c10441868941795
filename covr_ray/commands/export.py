"""``covr export RUN_DIR --format onnx|torchscript [--out DIR]``: the deployable policy artifact.

    covr export runs/driving-hw-0 --format onnx
    python -c "from covr_deploy import Policy; print(Policy.load('runs/driving-hw-0/export'))"

Writes the model file and ``manifest.json`` to ``<run_dir>/export/`` (or ``--out``) after checking that the
exported model reproduces the torch policy's actions (max abs diff < ``--atol``, default :data:`covr_ray.export.DEFAULT_ATOL`).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory (holds policy/policy.pt), or a policy.pt file")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="model format")
    parser.add_argument("--out", default=None, help="artifact directory (default: RUN_DIR/export)")
    parser.add_argument("--atol", type=float, default=None,
                        help="max accepted action difference (default: covr_ray.export.DEFAULT_ATOL)")
    parser.add_argument("--json", action="store_true", help="print the manifest as one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.export import DEFAULT_ATOL, export_run

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    manifest, out_dir = export_run(args.run_dir, args.format, args.out, atol=atol)
    if args.json:
        print(json.dumps({**manifest, "artifact_dir": str(out_dir)}, sort_keys=True))
        return 0
    v = manifest["verification"]
    print(f"exported {manifest['format']} policy ({manifest['size_bytes'] / 1e6:.2f} MB, "
          f"{manifest['parameters']:,} parameters) to {out_dir}")
    print(f"  obs {manifest['obs_shape']} uint8 -> action ({manifest['action_dim']},) float32 in [-1, 1]; "
          f"env {manifest['env']}, {manifest['env_steps']} env steps")
    print(f"  verified: max abs diff {v['max_abs_diff']:.2e} < {v['atol']} over {v['observations']} observations")
    return 0
