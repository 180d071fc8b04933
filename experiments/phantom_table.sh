#!/usr/bin/env bash
# The phantom results table (docs/phantom_results.md): the brain test split at 4x (uniform1d,
# 8% centre), zero-filled and CS against diffusion priors trained briefly on the CPU:
#   * an unconditional prior (+experiment=unconditional),
#   * a metadata prior (+experiment=additive), sampled conditionally (s = 1) and with every
#     field dropped (s = 0, the same network's unconditional branch).
# Both priors: same seed, data, steps and learning rate. Knobs (environment):
#   STEPS (2000), LR (5e-4; from scratch, not the paper's 5e-5 fine-tuning rate),
#   ENSEMBLES ("1 5": the sample counts K evaluated), METAMRI_ROOT (.),
#   PARALLEL (1: train the two priors side by side, one thread each).
# A prior whose last.ckpt exists resumes from it (a finished one stops at once), and an
# evaluation whose CSV exists is not rerun (delete $OUT, or set RETRAIN=1, to start over).
set -euo pipefail
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-python3}
ROOT=${METAMRI_ROOT:-.}
STEPS=${STEPS:-2000}
LR=${LR:-5e-4}
ENSEMBLES=${ENSEMBLES:-1 5}
OUT="$ROOT/logs/phantom_table"
mkdir -p "$OUT"
done_eval() { [ "${RETRAIN:-0}" != 1 ] && [ -f "$OUT/$1/reconstruction/test_metrics.csv" ]; }

echo "== baselines (also writes the phantom and the brain cache on first use)"
done_eval eval_baselines ||
  $PY -m metamri.evaluate paths.root_dir="$ROOT" hydra.run.dir="$OUT/eval_baselines" 'methods=[zero_filled,cs]'

train() {  # $1 = experiment
  local dir="$OUT/train_$1" resume=()
  if [ "${RETRAIN:-0}" = 1 ]; then
    rm -rf "$dir"
  elif [ -f "$dir/checkpoints/last.ckpt" ]; then
    # a finished run stops at once (max_steps reached); a killed one continues where it was
    echo "   $1: resuming from $dir/checkpoints/last.ckpt"
    resume=("ckpt_path=$dir/checkpoints/last.ckpt")
  fi
  $PY -m metamri.train +experiment="$1" paths.root_dir="$ROOT" hydra.run.dir="$dir" \
    trainer.max_steps="$STEPS" optimizer.lr="$LR" logger=csv "~callbacks.rich_progress_bar" \
    trainer.enable_progress_bar=false "${resume[@]}" \
    >> "$OUT/train_$1.log" 2>&1
}
echo "== train the unconditional and the metadata prior for $STEPS steps (logs in $OUT/train_*.log)"
if [ "${PARALLEL:-1}" = 1 ]; then
  OMP_NUM_THREADS=1 train unconditional & pid=$!
  OMP_NUM_THREADS=1 train additive
  wait "$pid"
else
  train unconditional
  train additive
fi

diffusion() {  # $1 = label, $2 = experiment, $3 = K, then extra overrides
  local label=$1 exp=$2 k=$3; shift 3
  done_eval "eval_${label}_k$k" && return 0
  $PY -m metamri.evaluate paths.root_dir="$ROOT" hydra.run.dir="$OUT/eval_${label}_k$k" \
    'methods=[diffusion]' prior="$OUT/train_$exp/checkpoints/last.ckpt" ensemble="$k" "$@"
}
for k in $ENSEMBLES; do
  echo "== posterior sampling (DDS, 100 steps, K = $k)"
  diffusion unconditional unconditional "$k"
  diffusion metadata additive "$k" guidance_scale=1
  diffusion metadata_s0 additive "$k" guidance_scale=0
done

$PY experiments/phantom_table.py "$OUT" --steps "$STEPS" --lr "$LR"
