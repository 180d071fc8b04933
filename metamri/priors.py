"""Load a diffusion prior, whatever form it comes in: ``load_prior(path)``.

Two forms are first-class:

* a Lightning checkpoint (``.ckpt``) written by ``metamri.train``: it rebuilds its
  :class:`~metamri.training.module.MetaDiffusionModule` (UNet, encoder with its fitted
  statistics, LoRA adapters, EMA) from what it stores;
* a diffusers directory laid out as ContextMRI's release (``unet/``, ``scheduler/``,
  ``text_encoder/``, ``tokenizer/``): scored as-is, the UNet, noise schedule, text
  encoder and tokenizer all read from that one directory, the metadata turned into
  the prompt ContextMRI was trained on;
* a ``metamri`` directory of :mod:`metamri.export` (``module.safetensors`` and
  ``module.json``): any trained module's (EMA) weights without optimizer state, rebuilt
  from its hyper-parameters as the checkpoint is.

The evaluation and reconstruction CLIs call :func:`load_prior` with their
``prior`` key.  Every form is data, never code: a checkpoint is read with
``torch.load(weights_only=True)``, and the stored configs of a checkpoint or a
``metamri`` directory may name only metamri's own components (:mod:`metamri.trust`,
``docs/security.md``); transformers never runs a directory's own code.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from metamri.errors import ConfigError


def is_diffusers_dir(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a directory with a ``unet/`` folder (a diffusers checkpoint)."""
    p = Path(path)
    return p.is_dir() and (p / "unet").is_dir()


def is_metamri_dir(path: str | PathLike[str]) -> bool:
    """Whether ``path`` is a directory of ``metamri.export --layout metamri``."""
    from metamri.export import HPARAMS_FILE, STATE_FILE

    p = Path(path)
    return p.is_dir() and (p / STATE_FILE).is_file() and (p / HPARAMS_FILE).is_file()


def load_prior(path: str | PathLike[str] | None, key: str = "prior"):
    """The prior at ``path`` as a :class:`~metamri.training.module.MetaDiffusionModule`, in eval mode.

    Args:
        path: A ``.ckpt`` file of ``metamri.train``, a diffusers directory, or a
            ``metamri`` directory of :mod:`metamri.export`.
        key: Config key named in errors.
    """
    if not path:
        raise ConfigError(key, path, "the diffusion method needs a prior",
                          hint=f"pass {key}=/path/to/last.ckpt (or a diffusers directory), "
                               "or methods=[zero_filled,cs]")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if is_metamri_dir(p):
            return load_metamri_prior(p, key)
        if not is_diffusers_dir(p):
            raise ConfigError(key, str(path), "a directory without unet/ (diffusers) or module.safetensors "
                                              "(metamri.export) is not a prior",
                              hint="pass a .ckpt of metamri.train, a directory written by metamri.export, "
                                   "or a ContextMRI (diffusers) directory")
        return load_diffusers_prior(p)
    if not p.is_file():
        raise ConfigError(key, str(path), "no such checkpoint file or directory")
    from metamri.training.module import MetaDiffusionModule

    # Read as data: torch.load(weights_only=True) and the stored configs checked against
    # metamri.trust before anything is built (MetaDiffusionModule.load_from_checkpoint).
    return MetaDiffusionModule.load_from_checkpoint(str(p), map_location="cpu", weights_only=True).eval()


def diffusers_prior_config(path: str | PathLike[str]) -> dict:
    """The module configs that score the diffusers directory at ``path`` as-is.

    UNet and noise schedule from ``path/unet`` and ``path/scheduler``; the metadata
    encoder is the text encoder over ``path/text_encoder`` and ``path/tokenizer`` with
    its identity projection (the UNet reads the text model's states unchanged) and the
    ContextMRI prompt; no EMA (the directory holds the weights to sample with).
    """
    root = Path(path).expanduser()
    missing = [d for d in ("unet", "scheduler", "text_encoder", "tokenizer") if not (root / d).is_dir()]
    if missing:
        raise ConfigError("prior", str(path), f"the diffusers directory lacks {', '.join(missing)}/",
                          hint="a ContextMRI-layout prior holds unet/, scheduler/, text_encoder/ "
                               "and tokenizer/")
    return {
        "unet": {"_target_": "metamri.models.unet.build_unet", "pretrained": str(root),
                 "cross_attention_dim": None},
        "scheduler": {"_target_": "metamri.models.scheduler.build_scheduler", "pretrained": str(root)},
        "encoder": {"_target_": "metamri.encoders.text.TextEncoder", "fields": "contextmri",
                    "prompt": "contextmri", "projection": "identity", "path": str(root)},
        "ema_decay": None,
    }


def load_diffusers_prior(path: str | PathLike[str]):
    """A ContextMRI-layout diffusers directory as a text-conditioned module, in eval mode."""
    from metamri.training.module import MetaDiffusionModule

    return MetaDiffusionModule(**diffusers_prior_config(path)).eval()


def load_metamri_prior(path: str | PathLike[str], key: str = "prior"):
    """A ``metamri``-layout directory (:func:`metamri.export.export_module_state`), in eval mode.

    The module is rebuilt from ``module.json``'s hyper-parameters (with its UNet
    architecture, LoRA adapters and encoder), then every tensor of ``module.safetensors``
    (cast to the module's dtype) and the encoders' non-tensor state are loaded strictly.
    The hyper-parameters are checked first (:func:`metamri.trust.check_stored_config`):
    a ``_target_`` outside metamri's components is a ``CheckpointError``.
    """
    import json

    import torch
    from safetensors.torch import load_file

    from metamri.export import HPARAMS_FILE, STATE_FILE
    from metamri.training.module import MetaDiffusionModule
    from metamri.trust import check_stored_config

    root = Path(path)
    try:
        stored = json.loads((root / HPARAMS_FILE).read_text())
        hparams, extra_state = stored["hparams"], stored.get("extra_state", {})
        if not isinstance(hparams, dict):
            raise TypeError(f"hparams is a {type(hparams).__name__}, not a dict")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(key, str(path), f"{HPARAMS_FILE} is not an export's hyper-parameters ({err})",
                          hint="re-export the checkpoint with python -m metamri.export --layout metamri") from None
    check_stored_config(hparams, root / HPARAMS_FILE, path="hparams")
    module = MetaDiffusionModule(**hparams)
    try:
        tensors = load_file(str(root / STATE_FILE))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ConfigError(key, str(path), f"{STATE_FILE} cannot be read ({err})",
                          hint="the file is truncated or not safetensors; re-export it") from None
    own = module.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and isinstance(own[k], torch.Tensor) else v)
             for k, v in tensors.items()}
    state.update(extra_state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(key, str(path), f"its weights do not fit the module of {HPARAMS_FILE}: {err}") from None
    return module.eval()
