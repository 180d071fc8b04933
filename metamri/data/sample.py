"""Typed samples: arrays with their metadata carried beside them, never inside them."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from metamri.metadata.record import Metadata


class KSpaceSlice(NamedTuple):
    """One 2-D slice of raw multi-coil k-space as read from a file.

    Attributes:
        kspace: complex64, (coils, readout, phase): the phase-encode (undersampled)
            axis is last, as in fastMRI, for every format; readout may be
            oversampled 2x (fastMRI brain stores 640 readout points for a 320 image).
        metadata: The slice's :class:`Metadata` (``slice`` filled in).
        fname: Source file name (``path.name``), used to seed masks.
        path: Full source path as a string.
        slice_index: Index along the file's slice axis.
        frame: Cine frame index (CMRxRecon), ``None`` for static data.
        domain: ``"brain"`` or ``"cardiac"``.
        mask: bool (phase,) sampling mask stored in the file, or ``None`` when the
            file is fully sampled.
        target: float32 (H, W) reference magnitude stored in the file
            (fastMRI's ``reconstruction_rss``), or ``None``.
        recon_size: (H, W) image size after cropping away readout oversampling.
    """

    kspace: np.ndarray
    metadata: Metadata
    fname: str
    path: str
    slice_index: int
    frame: int | None
    domain: str
    mask: np.ndarray | None
    target: np.ndarray | None
    recon_size: tuple[int, int]


class ImageSample(NamedTuple):
    """One preprocessed slice as the data modules serve it.

    Attributes:
        image: float32 (2, H, W): real and imaginary parts of the MVUE image
            divided by ``scale`` (the slice's 99th-percentile magnitude).
        metadata: The slice's :class:`Metadata`.
        domain: ``"brain"`` or ``"cardiac"``; picks the timestep range in training.
        fname: Source file name (seeds the sampling mask at evaluation).
        slice_index: Index along the source file's slice axis.
        frame: Cine frame, -1 for static data.
        scale: The p99 divisor; ``image * scale`` is in the source file's units.
        maps: complex64 (coils, H, W) ESPIRiT maps cropped like the image, or
            ``None`` when the data module was asked not to load them (training).
    """

    image: np.ndarray
    metadata: Metadata
    domain: str
    fname: str
    slice_index: int
    frame: int
    scale: float
    maps: np.ndarray | None = None
