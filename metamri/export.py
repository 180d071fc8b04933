"""Export a text-conditioned checkpoint as a ContextMRI-layout diffusers directory.

``python -m metamri.export CKPT OUT_DIR`` writes::

    OUT_DIR/
      unet/            the UNet with the checkpoint's EMA weights (safetensors)
      scheduler/       its DDPM noise schedule
      text_encoder/    the frozen text model the checkpoint was trained with (safetensors)
      tokenizer/       its tokenizer
      model_index.json
      export.json      where it came from: checkpoint, its step, SHA-256 of the UNet weights

so that ``prior=OUT_DIR`` (evaluation) and ``model=pretrained model.path=OUT_DIR``
(fine-tuning) read it exactly as they read ContextMRI's release.  Only a checkpoint of
``encoder=text`` with the identity projection has this layout (the UNet reads the text
model's states unchanged); anything else is refused with the reason.  The directory
appears whole or not at all (written beside ``OUT_DIR``, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any

from metamri.errors import ConfigError

MODEL_INDEX: dict[str, Any] = {
    "_class_name": "MRIPipeline",
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
}


def _check_exportable(module: Any, source: str) -> None:
    from metamri.encoders.text import TextEncoder

    enc = module.encoder
    if not isinstance(enc, TextEncoder):
        raise ConfigError("encoder", type(enc).__name__,
                          f"{source}: only a text-conditioned prior (encoder=text) has the diffusers layout",
                          hint="fine-grained encoders are not part of a diffusers directory; "
                               "evaluate the .ckpt itself with prior=...")
    if enc.projection != "identity":
        raise ConfigError("encoder.projection", enc.projection,
                          f"{source}: a trained projection has no place in the diffusers layout",
                          hint="train with model.text_projection=identity (the text model's width "
                               "must equal the UNet's context width)")
    if any("lora" in n for n, _ in module.unet.named_parameters()):
        raise ConfigError("finetune", "lora", f"{source}: LoRA adapters are not exported",
                          hint="export a full fine-tune, or evaluate the .ckpt itself")


def export_module(module: Any, out_dir: str | PathLike[str], *, source: str = "module",
                  extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``module`` (a text-conditioned :class:`MetaDiffusionModule`) to ``out_dir``.

    The UNet is saved with the module's EMA weights when it has them (what validation
    and sampling use), else its raw weights.  ``extra`` is merged into ``export.json``.
    """
    _check_exportable(module, source)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError("out_dir", str(out), "exists already", hint="remove it or pass overwrite=true")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is for sharing
    try:
        with module.ema_weights():
            module.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        module.noise_scheduler.save_pretrained(tmp / "scheduler")
        module.encoder.backbone.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        module.encoder.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
        weights = tmp / "unet" / "diffusion_pytorch_model.safetensors"
        info = {"source": source, "weights": "ema" if module.ema_decay is not None else "raw",
                "unet_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "unet_parameters": sum(p.numel() for p in module.unet.parameters()),
                **(extra or {})}
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(ckpt: str | PathLike[str], out_dir: str | PathLike[str], *,
                      overwrite: bool = False) -> Path:
    """Export the ``metamri.train`` checkpoint ``ckpt`` to ``out_dir`` (see the module doc)."""
    import torch

    from metamri.priors import load_prior

    module = load_prior(ckpt, key="ckpt")
    meta = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    extra = {"global_step": int(meta.get("global_step", -1)), "epoch": int(meta.get("epoch", -1))}
    return export_module(module, out_dir, source=str(ckpt), extra=extra, overwrite=overwrite)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 2:
        print("usage: python -m metamri.export CKPT OUT_DIR [--overwrite]", file=sys.stderr)
        return 2
    try:
        print(export_checkpoint(args[0], args[1], overwrite="--overwrite" in argv))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - command-line entry
    sys.exit(main(sys.argv[1:]))
