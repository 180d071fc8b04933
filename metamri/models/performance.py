"""How the UNet runs: reduced-precision autocast, TF32, channels-last, ``torch.compile``.

One frozen :class:`Performance` (the ``performance`` config group, conf/performance/default.yaml)
is shared by training, evaluation and reconstruction:

* ``precision``: ``fp32`` (default; exactly today's numbers), ``bf16`` or ``fp16``: the UNet
  forward runs under :func:`torch.autocast` with that dtype and its output is cast back to
  float32, so the sampler's arithmetic (Tweedie, CG data consistency, re-noising) stays in
  the k-space's precision. For training, Lightning's own ``trainer.precision=bf16-mixed``
  (or ``16-mixed``) does the same and is what to use; :meth:`Performance.autocast` covers
  the sampling paths Lightning does not drive. On CPU, bf16 autocast runs the matmuls and
  convolutions in bfloat16 (the parity tests bound its error); fp16 is meant for CUDA.
* ``tf32``: allow TensorFloat-32 matmuls and convolutions on Ampere and later GPUs
  (``torch.backends.{cuda.matmul,cudnn}.allow_tf32``; ignored on CPU).
* ``channels_last``: the UNet's weights (and so its convolutions) in NHWC memory format,
  which cuDNN's tensor-core kernels prefer; the numbers do not change.
* ``compile``: ``nn.Module.compile`` of the UNet in place (its ``state_dict`` keys stay the
  same, so checkpoints and exports are unaffected); ``compile_mode`` is passed on
  (``null``, ``"reduce-overhead"``, ``"max-autotune"``).

The analyses (``metamri.information``, ``metamri.interpret``) do not read this group and run
the UNet in float32 on purpose: they measure differences of a few percent between denoising
losses, or rank candidates by losses that differ in the third digit, and bf16's 8-bit mantissa
(relative rounding about 0.4%) is of the size of the effect they look for.

Attention already runs through PyTorch's ``scaled_dot_product_attention``: diffusers gives
every attention block an ``AttnProcessor2_0`` / ``AttnAddedKVProcessor2_0``, and the gated
processors of the concatenated encoder (:mod:`metamri.encoders.gated_attention`) call it
too. :func:`attention_backends` lists the processors so a run can log (and a test check)
that no block fell back to the explicit-softmax path.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from metamri.errors import ConfigError

#: ``precision`` -> the autocast dtype (``None``: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Performance:
    """Execution settings of the UNet; the defaults reproduce plain float32 eager PyTorch.

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast dtype of the UNet forward).
        tf32: allow TF32 on CUDA (no effect on CPU).
        channels_last: NHWC weights for the UNet.
        compile: ``torch.compile`` the UNet (in place).
        compile_mode: ``torch.compile``'s ``mode``.
    """

    precision: str = "fp32"
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("performance.precision", self.precision, "unknown precision",
                              hint=f"choose one of {list(PRECISIONS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError("performance.compile_mode", self.compile_mode, "unknown torch.compile mode",
                              hint=f"choose one of {list(COMPILE_MODES)}")
        for key in ("tf32", "channels_last", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"performance.{key}", getattr(self, key), "must be true or false")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Performance:
        """From the ``performance`` group (a mapping or a Hydra node); ``None`` -> defaults."""
        if cfg is None:
            return cls()
        raw = {k: cfg[k] for k in cfg}
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"performance.{unknown[0]}", raw[unknown[0]], "unknown key",
                              hint=f"the keys are {sorted(cls.__dataclass_fields__)}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for fp32."""
        return PRECISIONS[self.precision]

    # -- process-wide switches ----------------------------------------------------------------
    def configure_backends(self) -> None:
        """Set TF32 for this process (CUDA matmuls and cuDNN convolutions)."""
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32

    # -- the network --------------------------------------------------------------------------
    def prepare(self, unet: nn.Module) -> nn.Module:
        """Apply channels-last and ``torch.compile`` to ``unet`` in place; returns it."""
        self.configure_backends()
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
        if self.compile:
            unet.compile(mode=self.compile_mode)
        return unet

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for ``device``'s type with :attr:`dtype` (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    def wrap(self, eps_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``eps_fn(x_t, t, ctx)`` run under :meth:`autocast` (channels-last input when
        asked), its output cast back to ``x_t``'s dtype. fp32 without channels-last
        returns ``eps_fn`` itself."""
        if self.dtype is None and not self.channels_last:
            return eps_fn

        def run(x_t: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            x_in = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
            with self.autocast(x_t.device):
                eps = eps_fn(x_in, t, ctx)
            return eps.to(x_t.dtype).contiguous()

        return run


def attention_backends(unet: nn.Module) -> dict[str, int]:
    """Attention processor class name -> how many blocks use it (diffusers ``attn_processors``)."""
    processors = getattr(unet, "attn_processors", {})
    return dict(Counter(type(p).__name__ for p in processors.values()))
