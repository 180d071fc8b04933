#!/usr/bin/env bash
# Train the shipped base prior (pretrained/phantom_contextmri) in resumable pieces, then
# export it as a ContextMRI-layout diffusers directory with its model card.
#
#   bash experiments/base_prior/train.sh            # picks up where the last piece stopped
#   STEPS=8000 PIECE=1000 bash experiments/base_prior/train.sh
#
# Each piece trains PIECE more steps from the run's last.ckpt (Lightning restores the
# optimiser, EMA and step) and leaves its own log directory; a piece killed midway loses
# at most the steps since its last validation. When STEPS are done the EMA weights are
# exported to $OUT (default: pretrained/phantom_contextmri) and the model card written.
set -euo pipefail
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0
PY=${PY:-python3}
ROOT=${METAMRI_ROOT:-.}
STEPS=${STEPS:-6000}
PIECE=${PIECE:-1500}
OUT=${OUT:-pretrained/phantom_contextmri}
RUN=${RUN:-$ROOT/logs/base_prior}
INIT="$RUN/init"
CKPTS="$RUN/checkpoints"
# The training command, recorded verbatim in the model card.
TRAIN_ARGS=(+experiment=contextmri data=study model=pretrained "model.path=$INIT"
  data.batch_size=8 optimizer.lr=3e-4 seed=0 '~callbacks.reconstruction' logger=csv
  trainer.val_check_interval=250 trainer.check_val_every_n_epoch=null data.val_max_items=64
  "callbacks.model_checkpoint.dirpath=$CKPTS" paths.root_dir="$ROOT" ${EXTRA_ARGS:-})

[ -d "$INIT/unet" ] || $PY -m metamri.models.base_prior "$INIT"

step_of() {  # the global step stored in a checkpoint (0 when there is none)
  [ -f "$1" ] || { echo 0; return; }
  $PY -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['global_step'])" "$1"
}

done_steps=$(step_of "$CKPTS/last.ckpt")
while [ "$done_steps" -lt "$STEPS" ]; do
  target=$(( done_steps + PIECE < STEPS ? done_steps + PIECE : STEPS ))
  echo "== base prior: steps $done_steps -> $target of $STEPS"
  resume=()
  [ -f "$CKPTS/last.ckpt" ] && resume=("ckpt_path=$CKPTS/last.ckpt")
  $PY -m metamri.train "${TRAIN_ARGS[@]}" "${resume[@]}" trainer.max_steps="$target" \
    hydra.run.dir="$RUN/piece_$(printf %06d "$target")"
  done_steps=$(step_of "$CKPTS/last.ckpt")
done

echo "== export the EMA weights to $OUT"
$PY -m metamri.export "$CKPTS/last.ckpt" "$OUT" --overwrite
$PY experiments/base_prior/model_card.py "$RUN" "$OUT" "$STEPS" "${TRAIN_ARGS[*]}"
