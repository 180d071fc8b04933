"""Export a trained prior as a directory of safetensors weights, in one of two layouts.

``python -m metamri.export CKPT OUT_DIR [--layout contextmri|metamri] [--dtype float32|float16]``

``--layout contextmri`` (default) writes ContextMRI's diffusers layout::

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
model's states unchanged); anything else is refused with the reason.

``--layout metamri`` writes any prior (fine-grained, concatenated, LoRA, unconditional)::

    OUT_DIR/
      module.safetensors   every tensor of the module's state dict, EMA weights in place
      module.json          the hyper-parameters that rebuild the module, and the encoders'
                           non-tensor state (vocabularies, numeric ranges)
      export.json          as above, with the stored dtype and the SHA-256 of the weights

which ``prior=OUT_DIR`` reads as it reads the checkpoint (:func:`metamri.priors.load_prior`),
without optimizer state: about a quarter of the checkpoint's size (half again with
``--dtype float16``, which rounds every weight to float16 for storage; it is cast back to
float32 on load).  Paths in the hyper-parameters (a text encoder's ``path``) are kept as the
training run gave them.  Either directory appears whole or not at all (written beside
``OUT_DIR``, then renamed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def _atomic_dir(out_dir: str | PathLike[str], overwrite: bool) -> Iterator[Path]:
    """Yield a fresh directory beside ``out_dir`` that becomes ``out_dir`` if the block succeeds."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError("out_dir", str(out), "exists already", hint="remove it or pass overwrite=true")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is for sharing
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_module(module: Any, out_dir: str | PathLike[str], *, source: str = "module",
                  extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``module`` (a text-conditioned :class:`MetaDiffusionModule`) to ``out_dir``.

    The UNet is saved with the module's EMA weights when it has them (what validation
    and sampling use), else its raw weights.  ``extra`` is merged into ``export.json``.
    """
    _check_exportable(module, source)
    with _atomic_dir(out_dir, overwrite) as tmp:
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
    return Path(out_dir)


#: Files of the ``metamri`` layout (:func:`export_module_state`).
STATE_FILE, HPARAMS_FILE = "module.safetensors", "module.json"
DTYPES = ("float32", "float16")


def export_module_state(module: Any, out_dir: str | PathLike[str], *, dtype: str = "float32",
                        source: str = "module", extra: dict[str, Any] | None = None,
                        overwrite: bool = False) -> Path:
    """Write any :class:`MetaDiffusionModule` to ``out_dir`` in the ``metamri`` layout (module doc).

    Args:
        module: The module; its EMA weights are stored when it has them.
        out_dir: The directory to create.
        dtype: ``"float32"`` or ``"float16"``: how floating-point tensors are stored.
        source: Where the module came from (``export.json``).
        extra: Merged into ``export.json``.
        overwrite: Replace an existing ``out_dir``.
    """
    import torch
    from safetensors.torch import save_file

    from metamri.training.module import _plain  # configs as plain containers, as hparams store them

    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, f"choose one of {list(DTYPES)}")
    tensors: dict[str, Any] = {}
    extra_state: dict[str, Any] = {}
    with module.ema_weights():  # copied inside: the state dict's tensors are the live parameters
        for key, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                value = value.detach().to("cpu", copy=True)
                if value.is_floating_point() and dtype == "float16":
                    value = value.to(torch.float16)
                tensors[key] = value.contiguous()
            else:
                extra_state[key] = value
    hparams = {**_plain(dict(module.hparams)), "ema_decay": None}  # the stored weights are the EMA
    with _atomic_dir(out_dir, overwrite) as tmp:
        save_file(tensors, str(tmp / STATE_FILE))
        try:
            text = json.dumps({"hparams": hparams, "extra_state": _plain(extra_state)}, indent=1)
        except TypeError as err:
            raise ConfigError("module", type(module).__name__,
                              f"{source}: its hyper-parameters or encoder state are not JSON ({err})") from None
        (tmp / HPARAMS_FILE).write_text(text + "\n")
        info = {"layout": "metamri", "source": source,
                "weights": "ema" if module.ema_decay is not None else "raw", "dtype": dtype,
                "sha256": hashlib.sha256((tmp / STATE_FILE).read_bytes()).hexdigest(),
                "parameters": sum(p.numel() for p in module.parameters()), **(extra or {})}
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return Path(out_dir)


def export_checkpoint(ckpt: str | PathLike[str], out_dir: str | PathLike[str], *,
                      layout: str = "contextmri", dtype: str = "float32", overwrite: bool = False) -> Path:
    """Export the ``metamri.train`` checkpoint ``ckpt`` to ``out_dir`` (see the module doc)."""
    import torch

    from metamri.priors import load_prior

    if layout not in LAYOUTS:
        raise ConfigError("layout", layout, f"choose one of {list(LAYOUTS)}")
    if layout == "contextmri" and dtype != "float32":
        raise ConfigError("dtype", dtype, "the contextmri layout is stored as float32",
                          hint="use --layout metamri for float16 storage")
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt", str(ckpt), "is a directory, not a checkpoint file" if path.is_dir()
                          else "no such checkpoint file", hint="pass a .ckpt of metamri.train")
    module = load_prior(ckpt, key="ckpt")
    from metamri.evaluation.wandb_log import TrainRun

    meta = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    train = TrainRun.of_prior(ckpt)  # so that evaluations of the export group with its training run
    extra = {"global_step": int(meta.get("global_step", -1)), "epoch": int(meta.get("epoch", -1)),
             "train_run": None if train.path is None else str(train.path),
             "train_wandb_group": train.group, "train_wandb_id": train.wandb_id}
    if layout == "metamri":
        return export_module_state(module, out_dir, dtype=dtype, source=str(ckpt), extra=extra,
                                   overwrite=overwrite)
    return export_module(module, out_dir, source=str(ckpt), extra=extra, overwrite=overwrite)


LAYOUTS = ("contextmri", "metamri")
USAGE = ("usage: python -m metamri.export CKPT OUT_DIR [--layout contextmri|metamri] "
         "[--dtype float32|float16] [--overwrite]")


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m metamri.export", usage=USAGE[7:])
    ap.add_argument("ckpt")
    ap.add_argument("out_dir")
    ap.add_argument("--layout", default="contextmri")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--overwrite", action="store_true")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exit_:
        return 2 if exit_.code else 0
    from metamri.utils.cli import exit_status

    # ConfigError, CheckpointError (a file that asks for more than data): one line, status 1
    return exit_status(lambda: print(export_checkpoint(args.ckpt, args.out_dir, layout=args.layout,
                                                       dtype=args.dtype, overwrite=args.overwrite)), status=1)


if __name__ == "__main__":  # pragma: no cover - command-line entry
    sys.exit(main(sys.argv[1:]))
