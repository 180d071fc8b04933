#!/usr/bin/env bash
# The main job on the embedded default (the phantom, on CPU, a few minutes):
#   1. write the phantom (fastMRI HDF5 + CMRxRecon v7.3) and show what the readers see;
#   2. fine-tune the shipped base prior (pretrained/phantom_contextmri) as OOD + additive;
#   3. reconstruct test slices at 4x: zero-filled, CS, the base prior, the fine-tuned prior;
#   4. a table with paired intervals and a PNG panel (truth, reconstructions, error maps).
# The demo phantom is drawn with seed 1: none of its patients trained the base prior.
# Everything lands under ${METAMRI_ROOT:-.}/data and ${METAMRI_ROOT:-.}/logs/demo.
set -euo pipefail
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-python3}
ROOT=${METAMRI_ROOT:-.}
STEPS=${DEMO_STEPS:-150}
BASE=${DEMO_BASE:-pretrained/phantom_contextmri}
OUT="$ROOT/logs/demo"
EVAL=(data=demo split=test domain=brain items_per_volume=2 paths.root_dir="$ROOT" wandb.enabled=false)

echo "== 1. the phantom (seed 1), written as fastMRI HDF5 and CMRxRecon v7.3"
$PY -m metamri.phantom seed=1 out_dir="$ROOT/data/phantom_demo" paths.root_dir="$ROOT"
$PY -m metamri.inspect "$(ls "$ROOT"/data/phantom_demo/brain/multicoil_train/*.h5 | head -n 1)" \
  "$ROOT"/data/phantom_demo/cardiac/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax.mat | head -n 40

echo "== 2. fine-tune the base prior ($BASE) as OOD + additive for $STEPS steps (preprocesses on first use)"
rm -rf "$OUT"
$PY -m metamri.train +experiment=ood_additive data=demo model=pretrained model.path="$BASE" \
  paths.root_dir="$ROOT" hydra.run.dir="$OUT/train" trainer.max_steps="$STEPS" optimizer.lr=1e-4 \
  data.batch_size=8 logger=csv '~callbacks.reconstruction' trainer.val_check_interval="$STEPS" \
  trainer.check_val_every_n_epoch=null

echo "== 3. reconstruct the test split's central slices at 4x"
$PY -m metamri.evaluate prior="$OUT/train/checkpoints/last.ckpt" "${EVAL[@]}" \
  'methods=[zero_filled,cs,diffusion]' hydra.run.dir="$OUT/eval_finetuned"
$PY -m metamri.evaluate prior="$BASE" "${EVAL[@]}" 'methods=[diffusion]' hydra.run.dir="$OUT/eval_base"

echo "== 4. the table and the panel"
$PY experiments/demo_report.py "$OUT/eval_finetuned" "$OUT/eval_base" "$OUT"
