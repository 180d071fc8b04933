"""What a stored config may name: loading a prior is reading data, never running code.

A trained prior rebuilds itself from the Hydra-style configs (``_target_`` + values)
that :class:`~metamri.training.module.MetaDiffusionModule` keeps as hyper-parameters
(in a ``.ckpt``'s ``hyper_parameters``, in an export's ``module.json``).  Hydra's
``instantiate`` imports and calls whatever ``_target_`` names, at any depth, so a file
that holds only plain values could still run ``os.system`` on load.  Before anything is
built, :func:`check_stored_config` therefore walks the whole stored structure and
refuses, naming the file, the key path and the value:

* a ``_target_`` outside :data:`TRUSTED_TARGETS` (the components the module really builds);
* Hydra keys that reach past that list: ``_args_`` (positional arguments; a nested
  target inside is named first), any other ``_name_`` key but ``_partial_``,
  ``_recursive_`` and ``_convert_``, and Lightning's ``_instantiator`` / ``_class_path``;
* OmegaConf interpolations (``${...}``): Hydra resolves them before it instantiates, and
  a resolver such as ``oc.create`` turns a string into a new ``_target_`` after the check.

:func:`read_checkpoint` reads a checkpoint with ``torch.load(weights_only=True)``
(tensors and plain values only: pickled code is refused by torch itself) and checks its
hyper-parameters.  See ``docs/security.md``.

A new component that stored configs should name is one more line in
:data:`TRUSTED_TARGETS`.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import IO, Any

from metamri.errors import CheckpointError

#: Import paths a stored config may name in ``_target_``: the UNet and noise schedule
#: builders (``unet``, ``scheduler``; conf/model/), the metadata encoders (``encoder``;
#: conf/encoder/), the fine-tuning modes (``finetune``), the timestep ranges
#: (``timestep_sampler``; conf/timesteps/), CFG dropout (``dropout``) and the
#: optimizers (``optimizer``).  Extend it by one line for a new component.
TRUSTED_TARGETS: frozenset[str] = frozenset({
    "metamri.models.unet.build_unet",
    "metamri.models.scheduler.build_scheduler",
    "metamri.encoders.finegrained.FineGrainedEncoder",
    "metamri.encoders.fusion.FusionEncoder",
    "metamri.encoders.text.TextEncoder",
    "metamri.encoders.none.NullEncoder",
    "metamri.training.finetune.FullFinetune",
    "metamri.training.finetune.LoraFinetune",
    "metamri.training.timesteps.TimestepRangeSampler",
    "metamri.training.dropout.FieldDropout",
    "torch.optim.AdamW",
    "torch.optim.Adam",
    "torch.optim.SGD",
})

#: Hydra keys a stored config may hold besides ``_target_``: they change how a trusted
#: target is called (partially, with nested configs as dicts, ...), never what is called.
HYDRA_KEYS: frozenset[str] = frozenset({"_target_", "_partial_", "_recursive_", "_convert_"})

#: Keys that import or call something the list does not cover, and why.
REFUSED_KEYS: dict[str, str] = {
    "_args_": "Hydra passes positional arguments; metamri's components take keywords only",
    "_instantiator": "Lightning would rebuild the module through this callable",
    "_class_path": "Lightning would import and build this class",
}

_HINT = ("metamri rebuilds a stored prior only from its own components (metamri.trust.TRUSTED_TARGETS); "
         "if this is your own component and you trust the file, add its import path there "
         "(docs/security.md)")
_INTERPOLATION = "${"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def check_stored_config(config: Any, source: str | PathLike[str], path: str = "") -> None:
    """Refuse a stored config that could run more than metamri's own components.

    Walks ``config`` (dicts, lists and tuples at any depth) and raises
    :class:`~metamri.errors.CheckpointError` naming ``source``, the key path (e.g.
    ``encoder.text._target_``) and the value of the first entry that names a callable
    outside :data:`TRUSTED_TARGETS`, holds a Hydra / Lightning key that imports or calls
    things (:data:`REFUSED_KEYS`, any ``_name_`` key not in :data:`HYDRA_KEYS`), or holds
    an OmegaConf interpolation.

    Args:
        config: The stored structure (a module's hyper-parameters, or one part of them).
        source: The file it was read from (named in the error).
        path: Key path of ``config`` inside the file's structure (``""`` at its root).
    """
    if isinstance(config, Mapping):
        if "_target_" in config:
            target = config["_target_"]
            if not isinstance(target, str) or target not in TRUSTED_TARGETS:
                raise CheckpointError(source, "not a component metamri builds", key=_join(path, "_target_"),
                                      value=target, hint=_HINT)
        for key, value in config.items():
            where = _join(path, key)
            _check_string(key, source, where, "key")
            check_stored_config(value, source, where)  # a nested target is named before its _args_
            name = str(key)
            if name in REFUSED_KEYS:
                raise CheckpointError(source, REFUSED_KEYS[name], key=where, value=value, hint=_HINT)
            if len(name) > 2 and name.startswith("_") and name.endswith("_") and name not in HYDRA_KEYS:
                raise CheckpointError(source, f"not a Hydra key a stored config may hold "
                                              f"(only {sorted(HYDRA_KEYS)})", key=where, value=value,
                                      hint=_HINT)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_stored_config(value, source, f"{path}[{i}]")
    else:
        _check_string(config, source, path, "value")


def _check_string(value: Any, source: str | PathLike[str], where: str, what: str) -> None:
    if isinstance(value, str) and _INTERPOLATION in value:
        raise CheckpointError(source, f"an interpolation in a stored {what}: Hydra resolves it before it "
                                      "instantiates, and a resolver can run code (oc.create) or read "
                                      "the environment (oc.env)", key=where or "<root>", value=value,
                              hint="a stored config holds resolved values only; re-export the prior")


_GLOBAL = re.compile(r"GLOBAL (\S+)")
_OPERAND = re.compile(r"Unsupported operand \d+")


def read_checkpoint(source: str | PathLike[str] | IO[bytes], *, check_config: bool = True,
                    name: str | None = None) -> dict[str, Any]:
    """A torch checkpoint read as data: ``torch.load(map_location="cpu", weights_only=True)``.

    Tensors, plain containers and numbers load; any other pickled object (a class whose
    ``__reduce__`` runs code) is refused by torch's restricted unpickler before it runs,
    and reported as a :class:`~metamri.errors.CheckpointError` naming the global it asked
    for.  With ``check_config`` the ``hyper_parameters`` (what Lightning's
    ``load_from_checkpoint`` passes to the module) go through :func:`check_stored_config`.
    Files in torch's zip format are memory-mapped, so a check before the real load costs
    little more than the pickle's metadata.

    Args:
        source: The checkpoint path (or an open binary file).
        check_config: Also check the stored hyper-parameters.
        name: How errors name the file (default: the path).
    """
    import torch

    label = name or (str(source) if isinstance(source, (str, PathLike)) else "<checkpoint stream>")
    mmap = isinstance(source, (str, PathLike)) and zipfile.is_zipfile(source)
    target = str(source) if isinstance(source, (str, PathLike)) else source
    try:
        ckpt = torch.load(target, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found is None and "Unsupported operand" in str(err):  # not a pickle at all: random bytes
            opcode = _OPERAND.search(str(err))
            raise CheckpointError(label, "not a readable torch checkpoint (not a pickle: "
                                         f"{opcode.group(0) if opcode else 'unknown opcode'})",
                                  hint="the file is truncated or not a .ckpt of metamri.train") from None
        raise CheckpointError(
            label, "holds pickled objects other than tensors and plain values; torch.load(weights_only=True) "
                   "refused it before anything ran",
            key="pickled global" if found else None, value=found.group(1) if found else ...,
            hint="metamri never unpickles code from a checkpoint; if you made the file and trust it, "
                 "re-save its state_dict and hyper_parameters as tensors and plain values "
                 "(docs/security.md)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(label, f"not a readable torch checkpoint ({first})",
                              hint="the file is truncated or not a .ckpt of metamri.train") from None
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(label, f"holds a {type(ckpt).__name__}, not a checkpoint dict",
                              hint="pass a .ckpt of metamri.train")
    if check_config:
        hparams = ckpt.get("hyper_parameters", {})
        if not isinstance(hparams, Mapping):
            raise CheckpointError(label, "its hyper-parameters are not a dict", key="hyper_parameters",
                                  value=type(hparams).__name__)
        check_stored_config(hparams, label, path="hyper_parameters")
    return dict(ckpt)


def check_hparams_file(path: str | PathLike[str]) -> None:
    """Check a YAML hyper-parameter file (Lightning's ``hparams_file``) as a stored config."""
    import yaml

    p = Path(path)
    if p.suffix.lower() in (".yml", ".yaml"):
        check_stored_config(yaml.safe_load(p.read_text()) or {}, p)
