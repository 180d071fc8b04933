"""Which parameters train: full fine-tuning or LoRA on the UNet's attention projections.

* :class:`FullFinetune`: every UNet parameter trains.
* :class:`LoraFinetune` (paper Sec. 3.5): the UNet is frozen and ``peft`` LoRA
  adapters ``W + (alpha / r) B A`` (A: r x d_in Gaussian, B: d_out x r zero, so the
  adapted UNet starts equal to the pretrained one) are added to the attention
  projections, as diffusers' ``train_text_to_image_lora.py`` does, and to every
  other projection that reads the context (``target_modules="auto"``,
  :func:`lora_targets`): in ContextMRI's ``SimpleCrossAttn`` blocks the context
  goes through ``add_k_proj``/``add_v_proj`` (``to_k``/``to_v`` there act on the
  image tokens), and its UNet also reads the context in ``encoder_hid_proj`` and
  the ``TextTimeEmbedding`` pooling (``add_embedding``).

The metadata encoder trains in both.  The optimizer sees
:func:`trainable_parameters` only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from torch import nn

from metamri.errors import ConfigError

log = logging.getLogger(__name__)

#: The projections of a diffusers ``Attention`` that get adapters (those that exist).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")


def lora_targets(unet: nn.Module) -> list[str]:
    """Full names of the ``Linear`` layers that ``target_modules="auto"`` adapts in ``unet``.

    * every diffusers ``Attention``'s ``to_q``/``to_k``/``to_v``/``to_out.0`` and, where
      present (``SimpleCrossAttn`` blocks), ``add_k_proj``/``add_v_proj``;
    * the ``Linear`` layers of ``encoder_hid_proj`` (the context's projection to the
      attention width) and of a ``TextTimeEmbedding`` ``add_embedding`` (the attention
      pooling of the context into the time embedding), when the UNet has them.
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import TextTimeEmbedding

    names: list[str] = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        for proj in ATTENTION_PROJECTIONS:
            sub = module.get_submodule(proj) if _has_submodule(module, proj) else None
            if isinstance(sub, nn.Linear):
                names.append(f"{name}.{proj}")
    readers = [("encoder_hid_proj", getattr(unet, "encoder_hid_proj", None))]
    if isinstance(getattr(unet, "add_embedding", None), TextTimeEmbedding):
        readers.append(("add_embedding", unet.add_embedding))
    for prefix, module in readers:
        if module is None:
            continue
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear):
                names.append(f"{prefix}.{name}" if name else prefix)
    return names


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def adapter_counts(unet: nn.Module) -> dict[str, int]:
    """How many LoRA-adapted layers of each kind ``unet`` holds, keyed by the layer's name
    within its block (``to_k``, ``add_k_proj``, ``encoder_hid_proj``, ``add_embedding.pool.q_proj`` ...)."""
    counts: Counter[str] = Counter()
    for name, module in unet.named_modules():
        if not hasattr(module, "lora_A") or not len(getattr(module, "lora_A", ())):
            continue
        if name.startswith(("encoder_hid_proj", "add_embedding")):
            counts[name] += 1
        else:
            parts = name.split(".")
            counts[".".join(parts[-2:]) if parts[-2] == "to_out" else parts[-1]] += 1
    return dict(sorted(counts.items()))


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (what the optimizer and the EMA get)."""
    return [p for p in module.parameters() if p.requires_grad]


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "frozen": n, "total": n}`` element counts, for logging."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


class FullFinetune:
    """Train every UNet parameter."""

    name = "full"

    def apply(self, unet: nn.Module) -> nn.Module:
        unet.requires_grad_(True)
        return unet


class LoraFinetune:
    """Freeze the UNet and train LoRA adapters on its attention projections.

    Args:
        rank: r, the adapters' inner dimension.
        alpha: Scale numerator; the update is ``(alpha / r) B A``.
        target_modules: ``"auto"`` (every projection that reads the context, resolved per
            architecture by :func:`lora_targets`), or a list of module-name suffixes
            (``peft``'s matching: a name equal to one, or ending in ``.`` + one).
        dropout: Dropout on the adapters' input.
    """

    name = "lora"

    def __init__(
        self,
        rank: int = 4,
        alpha: float = 4,
        target_modules: str | Sequence[str] = "auto",
        dropout: float = 0.0,
    ) -> None:
        if int(rank) <= 0:
            raise ConfigError("finetune.rank", rank, "must be a positive integer")
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        if isinstance(target_modules, str):
            if target_modules != "auto":
                raise ConfigError("finetune.target_modules", target_modules,
                                  "give 'auto' or a list of module names")
            self.target_modules: str | list[str] = "auto"
        else:
            self.target_modules = [str(m) for m in target_modules]
            if not self.target_modules:
                raise ConfigError("finetune.target_modules", target_modules, "name at least one module")
        self.resolved_targets: list[str] = []

    def apply(self, unet: nn.Module) -> nn.Module:
        from peft import LoraConfig

        targets = lora_targets(unet) if self.target_modules == "auto" else list(self.target_modules)
        if not targets:
            raise ConfigError("finetune.target_modules", self.target_modules,
                              "the UNet has no attention projection to adapt")
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        ))
        if not any("lora_" in n for n, _ in unet.named_parameters()):
            raise ConfigError("finetune.target_modules", self.target_modules,
                              "matched no module of the UNet")
        self.resolved_targets = targets
        log.info("LoRA adapters (rank %d) per layer kind: %s", self.rank, adapter_counts(unet))
        return unet
