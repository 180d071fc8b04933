#!/usr/bin/env bash
# The GPU figures of issue 13 in one call on the lent machine (prepared and checked on CPU first).
#   device run, carry [".whl"], timeout_s 540:
#     bash benchmarks/gpu/run.sh
# Needs .whl/ from benchmarks/gpu/wheels.sh. Writes into $OUT (or ./gpu_out): the CUDA tests' log,
# bench_gpu's section of docs/benchmarks.md, nvidia-smi, and the environment. Each stage has its own
# time limit, so one that hangs cannot eat the others' device time.
# GPU_DRY_RUN=1 runs the same stages on the CPU at toy sizes (a check of this script, nothing written).
# Size: the device call carries the working tree, at most 64 MiB. On 2026-12-07 the tracked files were
# 59.3 MB (47 MB of them the study's priors, which this script does not read) and .whl 6.9 MB: 66.2 of
# 67.1 MB. If the call says the tree is too large, move experiments/study/priors out of the checkout
# for the call and back after it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ] && [ "${GPU_DRY_RUN:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u; uname -a; nvidia-smi 2>&1 | head -15
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-', 'diffusers', diffusers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== 1. CUDA checks: tests/test_performance.py (the sampler loop never waits for the GPU; bf16 parity)"
timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_performance.py 2>&1 | tee "$OUT/pytest_performance.log"

echo "== 2. bench_gpu: contextmri UNet at 320 x 320, bf16 training MFU, DDS s/slice one-at-a-time vs batched"
if [ "${GPU_DRY_RUN:-0}" = 1 ]; then
  timeout 300 python3 benchmarks/bench_gpu.py --device cpu --preset tiny --size 32 --ctx-dim 64 --coils 4 \
    --sample-steps 3 --train-steps 2 --warmup 1 --sample-batch 2 2>&1 | tee "$OUT/bench_gpu.md"
else
  # batch 16 first; if it fails (out of memory, say), once more at batch 4, so the call still brings figures
  timeout 300 python3 benchmarks/bench_gpu.py --write 2>&1 | tee "$OUT/bench_gpu.md" ||
    timeout 240 python3 benchmarks/bench_gpu.py --write --train-batch 4 2>&1 | tee "$OUT/bench_gpu_batch4.md"
  cp docs/benchmarks.md "$OUT/benchmarks.md"
fi
echo "== done"
