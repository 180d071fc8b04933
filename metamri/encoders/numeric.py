"""Encodings of one normalised numeric value v in [0, 1] into a vector.

* :class:`SinusoidalEncoding` (the paper, Sec. 3.4): v is scaled like a diffusion
  timestep (``v * scale``, default 0..1000) and encoded with the DDPM sinusoidal
  embedding (diffusers' ``get_timestep_embedding``, cos first).
* :class:`LearnedEncoding` (beyond the paper): a linear map or a small MLP of v.

Both map float32 (B,) -> float32 (B, dim); the fine-grained encoder follows each
with a per-field MLP to the context width.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from metamri.errors import ConfigError


class SinusoidalEncoding(nn.Module):
    """``[cos(v s w_k), sin(v s w_k)]_k`` with ``w_k = max_period^(-k / (dim / 2))``.

    Args:
        dim: Output width (even).
        max_period: Longest period, in units of ``v * scale``.
        scale: Multiplier of v in [0, 1]; 1000 makes v = 1 look like timestep 1000.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ConfigError("encoder.numeric_dim", dim, "the sinusoidal encoding needs an even width")
        self.dim, self.max_period, self.scale = int(dim), float(max_period), float(scale)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        """value: float (B,) in [0, 1] -> float32 (B, dim)."""
        return get_timestep_embedding(
            value.float() * self.scale, self.dim, flip_sin_to_cos=True,
            downscale_freq_shift=0, max_period=self.max_period,
        )


class LearnedEncoding(nn.Module):
    """A learned function of v: ``Linear(1, dim)`` or, with ``hidden``, ``Linear-SiLU-Linear``.

    Args:
        dim: Output width.
        hidden: Hidden width of the MLP; ``None`` for a single linear layer.
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        if hidden is None:
            self.net: nn.Module = nn.Linear(1, dim)
        else:
            self.net = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.dim = int(dim)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        """value: float (B,) in [0, 1] -> float32 (B, dim)."""
        return self.net(value.float().unsqueeze(-1))


NUMERIC_ENCODINGS = ("sinusoidal", "learned")


def build_numeric_encoding(kind: str, dim: int) -> nn.Module:
    """``"sinusoidal"`` -> :class:`SinusoidalEncoding`; ``"learned"`` -> :class:`LearnedEncoding`
    (an MLP with hidden width ``dim``)."""
    if kind == "sinusoidal":
        return SinusoidalEncoding(dim)
    if kind == "learned":
        return LearnedEncoding(dim, hidden=dim)
    raise ConfigError("encoder.numeric_encoding", kind, "unknown numeric encoding",
                      hint=f"choose one of {list(NUMERIC_ENCODINGS)}")
