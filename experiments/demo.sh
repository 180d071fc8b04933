#!/usr/bin/env bash
# The main job on the embedded default (the phantom, on CPU): data -> inspect ->
# train (OOD + additive) -> reconstruct the test split at 4x -> metrics.
# Everything lands under ${METAMRI_ROOT:-.}/data and ${METAMRI_ROOT:-.}/logs.
set -euo pipefail
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-python3}
ROOT=${METAMRI_ROOT:-.}
STEPS=${DEMO_STEPS:-1000}

echo "== 1. the phantom, written as fastMRI HDF5 and CMRxRecon v7.3"
$PY -m metamri.phantom paths.root_dir="$ROOT"

echo "== 2. what the readers see in the first brain and cardiac files"
$PY -m metamri.inspect "$(ls "$ROOT"/data/phantom/brain/multicoil_train/*.h5 | head -n 1)" \
  "$ROOT"/data/phantom/cardiac/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat

echo "== 3. train the OOD + additive model for $STEPS steps (preprocesses on first use)"
RUN="$ROOT/logs/demo/train"
rm -rf "$RUN"
$PY -m metamri.train +experiment=ood_additive paths.root_dir="$ROOT" hydra.run.dir="$RUN" \
  trainer.max_steps="$STEPS" optimizer.lr=5e-4 logger=csv
$PY - "$RUN" <<'PYEOF'
import sys, pandas as pd
m = pd.read_csv(f"{sys.argv[1]}/csv/metrics.csv")
loss = m["train/loss"].dropna().to_numpy()
k = max(1, len(loss) // 5)
print(f"train/loss: first {k} logged mean {loss[:k].mean():.4f} -> last {k} logged mean {loss[-k:].mean():.4f}")
PYEOF

if [ -f metamri/evaluate.py ]; then
  echo "== 4. reconstruct the phantom test split at 4x and score it"
  $PY -m metamri.evaluate paths.root_dir="$ROOT" prior="$RUN/checkpoints/last.ckpt" \
    hydra.run.dir="$ROOT/logs/demo/evaluate" ${DEMO_EVAL_ARGS:-}
fi
