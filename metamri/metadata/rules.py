"""Rules that turn what a file stores into what a field means.

The schema's sources (:mod:`metamri.metadata.sources`) name these functions: the
inversion-recovery test that keeps fastMRI's TI (:func:`inversion_recovery_scan`),
and the two rules that give the imaging plane (:func:`axial_view`, :func:`cine_view`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metamri.metadata.sources import FileView

# fastMRI brain headers carry a TI on every scan; it is a placeholder (100 ms for
# TSE, 300 ms for FLASH) except on inversion-recovery sequences.
_IR_MARKERS = ("FLAIR", "STIR", "TIRM", "_IR", "IR_", "INVERSION", "MPRAGE")


def is_inversion_recovery(*labels: str | None) -> bool:
    """Whether any of the given labels (contrast, protocol name, sequence) names an IR sequence.

    >>> is_inversion_recovery("AXFLAIR", "TurboSpinEcho")
    True
    >>> is_inversion_recovery("AXT1", "AX T1 SE", "Flash")
    False
    """
    for label in labels:
        if not label:
            continue
        up = label.upper().replace(" ", "_")
        if any(marker in up for marker in _IR_MARKERS):
            return True
    return False


def inversion_recovery_scan(view: FileView, values: Mapping[str, Any]) -> bool:
    """The scan is an inversion recovery: its contrast, protocol name or sequence says so."""
    return is_inversion_recovery(values.get("contrast"), view.protocol, values.get("sequence"))


def axial_view(label: str) -> str | None:
    """``"AX"`` for an acquisition label starting with AX (fastMRI's AXT1, AXFLAIR ...).

    >>> axial_view("AXFLAIR"), axial_view("SAGT2")
    ('AX', None)
    """
    return "AX" if label.upper().startswith("AX") else None


def cine_view(name: str) -> str | None:
    """``"SAX"`` / ``"LAX"`` from a CMRxRecon file stem (``cine_sax``, ``cine_lax``).

    >>> cine_view("cine_sax"), cine_view("cine_lax"), cine_view("cine_2ch")
    ('SAX', 'LAX', None)
    """
    name = name.lower()
    if "sax" in name:
        return "SAX"
    if "lax" in name:
        return "LAX"
    return None
