"""Collated batches: tensors stacked, metadata kept as a list of records beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from metamri.data.sample import ImageSample
from metamri.metadata.record import Metadata


@dataclass
class ImageBatch:
    """A batch of :class:`ImageSample`.

    Attributes:
        image: float32 (B, 2, H, W), real/imag channels, p99-normalised.
        metadata: B records, in batch order.
        domain: B domain names.
        fname: B source file names.
        slice_index: int64 (B,).
        frame: int64 (B,), -1 for static data.
        scale: float32 (B,), the p99 divisors.
        maps: complex64 (B, C, H, W) or ``None`` (absent in training, or when the
            samples of a batch have different coil counts: evaluate with batch size 1 then).
    """

    image: torch.Tensor
    metadata: list[Metadata]
    domain: list[str]
    fname: list[str]
    slice_index: torch.Tensor
    frame: torch.Tensor
    scale: torch.Tensor
    maps: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.image.shape[0]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(
            image=self.image.to(device),
            metadata=self.metadata,
            domain=self.domain,
            fname=self.fname,
            slice_index=self.slice_index.to(device),
            frame=self.frame.to(device),
            scale=self.scale.to(device),
            maps=None if self.maps is None else self.maps.to(device),
        )


def collate_images(samples: Sequence[ImageSample]) -> ImageBatch:
    """Stack samples into an :class:`ImageBatch` (the DataLoader's ``collate_fn``)."""
    maps = None
    if all(s.maps is not None for s in samples):
        shapes = {s.maps.shape for s in samples}  # type: ignore[union-attr]
        if len(shapes) == 1:
            maps = torch.from_numpy(np.stack([s.maps for s in samples]))  # type: ignore[misc]
    return ImageBatch(
        image=torch.from_numpy(np.stack([s.image for s in samples]).astype(np.float32, copy=False)),
        metadata=[s.metadata for s in samples],
        domain=[s.domain for s in samples],
        fname=[s.fname for s in samples],
        slice_index=torch.tensor([s.slice_index for s in samples], dtype=torch.int64),
        frame=torch.tensor([s.frame for s in samples], dtype=torch.int64),
        scale=torch.tensor([s.scale for s in samples], dtype=torch.float32),
        maps=maps,
    )
