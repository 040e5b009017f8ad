#!/usr/bin/env bash
# The GPU checks, in one go and in under 8 minutes on a CUDA machine:
#   1. the tests that need CUDA (Testing/core/test_cuda.py: bfloat16 autocast, channels-last,
#      CPU-vs-GPU inference agreement, a training step, DDP with NCCL on 2+ GPUs);
#   2. one LA volume end to end (benchmarks/inference_speed.py, path b) with the bundled
#      default model and with the paper-sized network;
#   3. training iterations at the paper configuration (benchmarks/train_speed.py);
#   4. cohort throughput in volumes per minute over all GPUs (benchmarks/cohort_throughput.py).
# Without CUDA it runs the CPU fallback: the same steps at CPU sizes (the CUDA tests report
# themselves skipped), so the script is known to work before a GPU is at hand.
#
# Usage: bash benchmarks/gpu_check.sh            (PYTHON=... to choose the interpreter)
# Everything is also written to $GPU_CHECK_LOG (default: gpu_check-<date>.log in /tmp).
# Copy the tables it prints into benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LOG=${GPU_CHECK_LOG:-/tmp/gpu_check-$(date -u +%Y%m%dT%H%M%SZ).log}
LA=../shared/la
BUNDLED=src/fbanet/model/bundled/left_atrium.safetensors
exec > >(tee "$LOG") 2>&1

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    MODE=gpu
else
    MODE=cpu-fallback
fi
"$PY" - <<'EOF'
import platform, torch
print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.node()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
EOF
echo "mode: $MODE; log: $LOG"

FAILED=()
part() {  # part NAME SECONDS COMMAND...: run with a time limit, note a failure, go on
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit} s)"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local code=$?
    echo "== $name: exit $code after $((SECONDS - started)) s"
    [ "$code" -eq 0 ] || FAILED+=("$name (exit $code)")
}

if [ "$MODE" = gpu ]; then
    part "CUDA tests" 150 "$PY" -m pytest -q -p no:cacheprovider -rs Testing/core/test_cuda.py
    part "one LA volume, bundled model" 60 "$PY" benchmarks/inference_speed.py --sizes la \
        --skip-reference --repeats 3 --model "$BUNDLED" --device cuda
    part "one LA volume, paper-sized network" 90 "$PY" benchmarks/inference_speed.py \
        --sizes la --skip-reference --repeats 3 --device cuda
    part "training at the paper configuration" 150 "$PY" benchmarks/train_speed.py \
        --configs paper --iterations 5 --warmup 2 --device cuda
    part "cohort throughput, all GPUs" 90 "$PY" benchmarks/cohort_throughput.py --cases 8 \
        --repeats 1 --paper --data "$LA"
else
    part "CUDA tests (skip without CUDA)" 60 "$PY" -m pytest -q -p no:cacheprovider -rs \
        Testing/core/test_cuda.py
    part "one LA volume, bundled model" 120 "$PY" benchmarks/inference_speed.py --sizes la \
        --skip-reference --repeats 1 --model "$BUNDLED" --device cpu
    part "training at a CPU configuration" 120 "$PY" benchmarks/train_speed.py \
        --configs small --precisions bf16 --iterations 1 --warmup 1 --device cpu
    part "cohort throughput, one CPU worker" 150 "$PY" benchmarks/cohort_throughput.py \
        --cases 2 --repeats 1 --data "$LA"
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "gpu_check ($MODE): all parts ran; log: $LOG"
    exit 0
fi
echo "gpu_check ($MODE): failed parts: ${FAILED[*]}; log: $LOG"
exit 1
