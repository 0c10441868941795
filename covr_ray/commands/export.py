"""``covr export RUN_DIR --format onnx|torchscript [--out DIR] [--quantize none|fp16|int8]``: the deployable policy.

    covr export runs/driving-hw-0 --format onnx
    covr export runs/driving-hw-0 --quantize int8 --max-action-err 0.05   # smaller, faster; checked
    python -c "from covr_deploy import Policy; print(Policy.load('runs/driving-hw-0/export'))"

Writes the model file and ``manifest.json`` to ``<run_dir>/export/`` (or ``--out``) after checking that the
exported model reproduces the torch policy's actions (max abs diff < ``--atol``, default :data:`covr_ray.export.DEFAULT_ATOL`).
With ``--quantize``, the fp16 / int8 model is written instead, after its max abs action error on
``--observations`` recorded observations of the run's env stayed within ``--max-action-err`` (otherwise
``QuantizationError``, nothing written); see :mod:`covr_ray.export`.
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
    parser.add_argument("--quantize", choices=("none", "fp16", "int8"), default="none",
                        help="write an fp16 or int8 (static QDQ) ONNX model, checked against the float policy")
    parser.add_argument("--max-action-err", type=float, default=None,
                        help="max abs action error allowed for --quantize (default: fp16 0.01, int8 0.05)")
    parser.add_argument("--observations", type=int, default=None,
                        help="observations recorded from the run's env for --quantize (default 128; int8 "
                             "calibrates on half of them)")
    parser.add_argument("--json", action="store_true", help="print the manifest as one JSON object")


def run(args: argparse.Namespace) -> int:
    from covr_ray.export import DEFAULT_ATOL, DEFAULT_OBSERVATIONS, export_run

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    observations = DEFAULT_OBSERVATIONS if args.observations is None else args.observations
    manifest, out_dir = export_run(args.run_dir, args.format, args.out, atol=atol, quantize=args.quantize,
                                   max_action_err=args.max_action_err, observations=observations)
    if args.json:
        print(json.dumps({**manifest, "artifact_dir": str(out_dir)}, sort_keys=True))
        return 0
    v = manifest["verification"]
    print(f"exported {manifest['format']} policy ({manifest['size_bytes'] / 1e6:.2f} MB, "
          f"{manifest['parameters']:,} parameters) to {out_dir}")
    print(f"  obs {manifest['obs_shape']} uint8 -> action ({manifest['action_dim']},) float32 in [-1, 1]; "
          f"env {manifest['env']}, {manifest['env_steps']} env steps")
    q = manifest.get("quantization")
    if q is None:
        print(f"  verified: max abs diff {v['max_abs_diff']:.2e} < {v['atol']} over {v['observations']} observations")
        return 0
    print(f"  {q['mode']} ({q['method']}): {q['float_size_bytes'] / 1e6:.2f} MB float -> "
          f"{manifest['size_bytes'] / 1e6:.2f} MB")
    print(f"  action error vs the float policy over {q['observations']} recorded observations: max "
          f"{q['action_err_max']:.2e} <= {q['max_action_err']}, mean {q['action_err_mean']:.2e}")
    return 0
