"""The two views of a complex MR image used by the sampler.

The diffusion network sees a complex image as a real tensor with two channels
``(B, 2, H, W)`` (channel 0 = real part, channel 1 = imaginary part); the physics
(:mod:`metamri.physics`) works on complex tensors ``(B, H, W)``.  These two functions
convert between the views without changing any value.
"""

from __future__ import annotations

import torch


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """2-channel real image -> complex image.

    Args:
        x: real tensor (B, 2, H, W), float32 or float64; channel 0 real, channel 1 imaginary.

    Returns:
        complex tensor (B, H, W) (complex64 from float32, complex128 from float64).
    """
    if x.ndim != 4 or x.shape[1] != 2 or x.is_complex():
        raise ValueError(
            f"to_complex: expected a real tensor of shape (B, 2, H, W), got {tuple(x.shape)} "
            f"with dtype {x.dtype}"
        )
    return torch.complex(x[:, 0], x[:, 1])


def to_channels(z: torch.Tensor) -> torch.Tensor:
    """Complex image -> 2-channel real image; the inverse of :func:`to_complex`.

    Args:
        z: complex tensor (B, H, W).

    Returns:
        real tensor (B, 2, H, W): channel 0 = ``z.real``, channel 1 = ``z.imag``.
    """
    if z.ndim != 3 or not z.is_complex():
        raise ValueError(
            f"to_channels: expected a complex tensor of shape (B, H, W), got {tuple(z.shape)} "
            f"with dtype {z.dtype}"
        )
    return torch.stack((z.real, z.imag), dim=1)
