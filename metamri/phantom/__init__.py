"""The physics-based phantom: brain (MNI templates) and a beating heart, in the real file formats.

* :mod:`~metamri.phantom.tissue`: relaxation parameters and the signal equations;
* :mod:`~metamri.phantom.protocols`: realistic (sequence, TR, TE, TI, flip, B0) per contrast;
* :mod:`~metamri.phantom.brain`: brain anatomy and :func:`render_brain_volume`;
* :mod:`~metamri.phantom.cardiac`: procedural heart and :func:`render_cine`;
* :mod:`~metamri.phantom.phase`: smooth random image phase;
* :mod:`~metamri.phantom.coils`: birdcage coil maps, noise, k-space;
* :mod:`~metamri.phantom.presets`: named populations (``default``, ``study``);
* :mod:`~metamri.phantom.generate`: writes a dataset (``python -m metamri.phantom``).

See ``docs/phantom.md``.
"""

from metamri.phantom.brain import BrainPhantom, BrainVolume, make_brain_phantom, render_brain_volume
from metamri.phantom.cardiac import CardiacPhantom, CineVolume, make_cardiac_phantom, render_cine
from metamri.phantom.presets import PRESETS, Preset, get_preset
from metamri.phantom.protocols import Protocol, sample_brain_protocol, sample_cine_protocol

__all__ = [
    "BrainPhantom",
    "BrainVolume",
    "CardiacPhantom",
    "CineVolume",
    "PRESETS",
    "Preset",
    "Protocol",
    "get_preset",
    "make_brain_phantom",
    "make_cardiac_phantom",
    "render_brain_volume",
    "render_cine",
    "sample_brain_protocol",
    "sample_cine_protocol",
]
