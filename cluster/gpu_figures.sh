#!/usr/bin/env bash
# The GPU figures README quotes (issue: throughput), in one run on a machine with one CUDA GPU and PyTorch,
# transformers and peft; no Ray, vLLM or MuJoCo needed (gymnasium is, for the presets' env specs).
#
#   bash cluster/gpu_figures.sh [OUT_DIR]        # default OUT_DIR: gpu-figures; PYTHON=python3 by default
#
# Writes OUT_DIR/<figure>.json (one JSON object each, or the error) and OUT_DIR/log.txt:
#   learner-512   plain reference learner, dmc-cartpole-swingup sizes: 84x84x9, batch 512, hidden 1024
#   learner-128   the same at the driving presets' batch (128), action dim 2
#   lora-3b       LoRA samples/s on a Qwen2.5-VL-3B-shaped model with random weights, bf16, rank 128
#                 (carla-hw preset: batch 8, the driving instruction, 84x84 frames); lora-3b-b32: batch 32
#   deploy-cuda   the exported policy's single-observation latency on the GPU (TorchScript; float)
#   deploy-cpu-1t the same artifact as ONNX on one CPU thread of this machine
# A dry run of the script itself on a CPU box (tiny sizes):
#   DEVICE=cpu SHAPE=tiny UPDATES=2 LORA_STEPS=2 LORA_ARGS="--set lora.rank=8" CALLS=50 bash cluster/gpu_figures.sh /tmp/gpu-dry
set -u
OUT_DIR=${1:-gpu-figures}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda} SHAPE=${SHAPE:-qwen2.5-vl-3b} UPDATES=${UPDATES:-50} LORA_STEPS=${LORA_STEPS:-16}
CALLS=${CALLS:-2000}
export PYTHONPATH="$PWD:$PWD/envs:$PWD/deploy${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/log.txt"
covr() { $PY -m covr_ray.cli "$@"; }
figure() {  # figure NAME ARGS...: run `covr ARGS --json`, keep its last line as NAME.json
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: covr $*" | tee -a "$LOG"
    if covr "$@" --json >"$OUT_DIR/$name.out" 2>>"$LOG"; then
        tail -n 1 "$OUT_DIR/$name.out" >"$OUT_DIR/$name.json"
    else
        echo "{\"error\": \"exit $?, see log.txt\"}" >"$OUT_DIR/$name.json"
    fi
    rm -f "$OUT_DIR/$name.out"
    echo "   $(cat "$OUT_DIR/$name.json") ($((SECONDS - start)) s)" | tee -a "$LOG"
}
{ nvidia-smi -L; $PY -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers",
  transformers.__version__, "peft", peft.__version__, "cuda", torch.version.cuda)'; nproc; } 2>&1 | tee -a "$LOG"

[ -n "${SKIP_LEARNER:-}" ] || figure learner-512 bench learner --paths plain --preset dmc-cartpole-swingup --batch-size 512 --image-size 84 \
    --device $DEVICE --updates $UPDATES --warmup 5
[ -n "${SKIP_LEARNER:-}" ] || figure learner-128 bench learner --paths plain --preset driving-hw --batch-size 128 --image-size 84 \
    --device $DEVICE --updates $UPDATES --warmup 5
MODEL=${MODEL:-/tmp/covr-$SHAPE-random}
start=$SECONDS
covr make-tiny-vlm "$MODEL" --shape "$SHAPE" 2>&1 | tail -n 2 | tee -a "$LOG"
echo "   built in $((SECONDS - start)) s" | tee -a "$LOG"
figure lora-3b bench lora --model "$MODEL" --preset carla-hw --device $DEVICE --rows 64 --warmup 2 --steps $LORA_STEPS ${LORA_ARGS:-}
figure lora-3b-b32 bench lora --model "$MODEL" --preset carla-hw --device $DEVICE --rows 128 --warmup 1 --steps $LORA_STEPS --batch-size 32 ${LORA_ARGS:-}
figure deploy-cuda bench deploy --format torchscript --quantize none --device $DEVICE --calls $CALLS --warmup 200
figure deploy-cpu-1t bench deploy --format onnx --quantize none --device cpu --threads 1 --calls $CALLS --warmup 200
