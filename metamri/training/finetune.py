"""Which parameters train: full fine-tuning or LoRA on the UNet's attention projections.

* :class:`FullFinetune`: every UNet parameter trains.
* :class:`LoraFinetune` (paper Sec. 3.5): the UNet is frozen and ``peft`` LoRA
  adapters ``W + (alpha / r) B A`` (A: r x d_in Gaussian, B: d_out x r zero, so the
  adapted UNet starts equal to the pretrained one) are added to the attention
  projections, as diffusers' ``train_text_to_image_lora.py`` does.

The metadata encoder trains in both.  The optimizer sees
:func:`trainable_parameters` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metamri.errors import ConfigError


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
        target_modules: Module-name suffixes that get adapters (diffusers' attention
            projections; ``SimpleCrossAttn`` blocks also have ``add_k_proj``/``add_v_proj``,
            the projections of the context tokens).
        dropout: Dropout on the adapters' input.
    """

    name = "lora"

    def __init__(
        self,
        rank: int = 4,
        alpha: float = 4,
        target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
        dropout: float = 0.0,
    ) -> None:
        if int(rank) <= 0:
            raise ConfigError("finetune.rank", rank, "must be a positive integer")
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.target_modules = [str(m) for m in target_modules]
        if not self.target_modules:
            raise ConfigError("finetune.target_modules", target_modules, "name at least one module")

    def apply(self, unet: nn.Module) -> nn.Module:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=self.target_modules,
        ))
        if not any("lora_" in n for n, _ in unet.named_parameters()):
            raise ConfigError("finetune.target_modules", self.target_modules,
                              "matched no module of the UNet")
        return unet
