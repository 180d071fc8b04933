"""Rules that turn what a file stores into what a field means."""

from __future__ import annotations

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
