"""Hydra glue shared by the entry points: resolvers and instantiation helpers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: The repository's conf/, absolute. For apps started through a dispatcher
#: (``python -m metamri.interpret <command>``): Hydra resolves a relative ``config_path`` of
#: an imported module as a Python package, and finds no ``conf`` package.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def plain(value: Any) -> Any:
    """A Hydra/OmegaConf node as plain Python containers (resolved); anything else as is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a Hydra node, a mapping or an object with that attribute; ``default``
    when ``cfg`` is ``None`` or has no such key."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


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
