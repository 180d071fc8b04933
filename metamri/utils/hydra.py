"""Hydra glue shared by the entry points: resolvers and instantiation helpers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """Register ``${metamri.uid:}`` (a short random id that keeps run dirs apart).

    The id is drawn once per process and cached, so every interpolation in one
    run gives the same value.  DDP child processes receive the parent's run
    directory from Lightning, so they never draw their own.
    """
    if not OmegaConf.has_resolver("metamri.uid"):
        OmegaConf.register_new_resolver("metamri.uid", lambda: secrets.token_hex(3), use_cache=True)


def instantiate_dict(cfg: Mapping[str, Any] | DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict group (callbacks, loggers)."""
    from hydra.utils import instantiate

    out: list[Any] = []
    if not cfg:
        return out
    for name, conf in cfg.items():
        if isinstance(conf, (dict, DictConfig)) and "_target_" in conf:
            log.info("Instantiating %s <%s> (%s)", what, conf._target_, name)
            out.append(instantiate(conf))
    return out
