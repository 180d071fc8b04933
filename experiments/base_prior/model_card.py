"""Write the model card (README.md) of an exported base prior from its training run.

    python experiments/base_prior/model_card.py RUN_DIR OUT_DIR STEPS "TRAIN ARGS"

Reads the pieces' CSV logs under RUN_DIR (piece_*/csv/metrics.csv) for the validation
loss curve and OUT_DIR/export.json for the weights' provenance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd


def validation_curve(run: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(run.glob("piece_*/csv/metrics.csv"))]
    if not frames:
        raise SystemExit(f"{run}: no piece_*/csv/metrics.csv to read the validation loss from")
    m = pd.concat(frames, ignore_index=True)
    val = m.dropna(subset=["val/loss"])[["step", "val/loss"]]
    return val.drop_duplicates("step", keep="last").sort_values("step")


def main(run: str, out: str, steps: str, args: str) -> None:
    run_dir, out_dir = Path(run), Path(out)
    info = json.loads((out_dir / "export.json").read_text())
    val = validation_curve(run_dir)
    curve = "\n".join(f"| {int(s)} | {v:.4f} |" for s, v in zip(val["step"], val["val/loss"], strict=True))
    n_params = info["unet_parameters"]
    card = f"""# phantom_contextmri: metamri's base prior

A text-conditioned diffusion prior over 64 x 64 complex brain images (2 channels, real and
imaginary), laid out as ContextMRI's release (`unet/`, `scheduler/`, `text_encoder/`,
`tokenizer/`). It plays the part of the ContextMRI checkpoint at phantom scale: the study's
arms (experiments/README.md) fine-tune from it, as the paper fine-tunes from ContextMRI.

- **UNet**: ContextMRI's layout (`SimpleCrossAttn` blocks, pooled text added to the time
  embedding) at widths 32/64/96, {n_params / 1e6:.2f} M parameters
  (`metamri.models.base_prior.PHANTOM_CONTEXTMRI_UNET`); EMA weights (decay 0.999).
- **Text model**: a 2-layer, 64-wide CLIP text model, randomly initialised (seed 0) and
  frozen, as ContextMRI's CLIP is frozen; its BPE keeps the prompt's words whole
  (`metamri.models.base_prior.write_prompt_tokenizer`). The prompt is ContextMRI's
  (`metamri.metadata.prompt.contextmri_prompt`), emptied with p = 0.1 in training and
  its acquisition block kept with p = 0.5.
- **Data**: the phantom's study population (`python -m metamri.phantom preset=study`),
  brain training split only (90 patients, 270 volumes, 1350 slices; patient-level split,
  seed 0): MVUE images from 8-coil k-space with ESPIRiT maps, p99-normalised.
- **Training**: {steps} steps, batch 8, AdamW lr 3e-4 (constant), epsilon loss, timesteps
  uniform over [0, 1000), seed 0, on CPU.
- **Weights**: `unet/diffusion_pytorch_model.safetensors`, SHA-256 `{info["unet_sha256"]}`,
  exported from step {info.get("global_step", "?")} of `{Path(info["source"]).name}`.

## The command that made it

```bash
python -m metamri.phantom preset=study
STEPS={steps} bash experiments/base_prior/train.sh
```

which writes the initial directory (`python -m metamri.models.base_prior logs/base_prior/init`),
runs, piece by piece,

```bash
python -m metamri.train {args} trainer.max_steps=N [ckpt_path=logs/base_prior/checkpoints/last.ckpt]
```

and exports with `python -m metamri.export logs/base_prior/checkpoints/last.ckpt {out}`.

## Validation loss (fixed noise, EMA weights, 64 validation slices)

| step | val/loss |
|---|---|
{curve}

## Use

```bash
python -m metamri.evaluate prior={out}                                       # score it
python -m metamri.train +experiment=additive data=study model=pretrained model.path={out}  # fine-tune
```

Limits: trained on simulated brains (the phantom's templates, tissue physics and
coils), 64 x 64; it is a testbed prior, not a model of real anatomy.
"""
    (out_dir / "README.md").write_text(card)
    print(out_dir / "README.md")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
