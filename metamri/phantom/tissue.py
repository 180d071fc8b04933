"""Tissue relaxation parameters and the four MR signal equations of the phantom.

Units everywhere: times in **ms**, angles in **degrees**, field strength in **tesla**;
proton density (PD) is relative to water (CSF = 1).

Relaxation times
----------------
T1 follows the power law of Gach et al. 2008 ("2D & 3D Shepp-Logan phantom
standards for MRI"), ``T1 = A * B0**C`` seconds, with the constants of
``DESIGN.md``: grey matter A 0.857 C 0.376, white matter A 0.583 C 0.382, fat
A 0.324 C 0.137, blood A 1.35 C 0.34; CSF (4.2 s) and muscle (1.05 s) are field
independent (C = 0).  The cardiac tissues are tabulated at 1.5 T and 3 T
(myocardium 1008 / 1220 ms, ventricular blood 1441 / 1932 ms); their (A, C) are
the power law through those two points, so the table is reproduced exactly at
1.5 T and 3 T and interpolated in between.  T2 is either field independent or
tabulated at 1.5 T and 3 T and interpolated linearly in B0 (clamped outside).

Values not fixed by ``DESIGN.md`` (chosen here, from the usual literature ranges):

* lung parenchyma: PD 0.15 (air-filled), T1 1.2 s at 1.5 T / 1.35 s at 3 T, T2 40 ms;
* liver: T1 586 / 809 ms, T2 46 / 34 ms at 1.5 / 3 T (de Bazelaire et al. 2004), PD 0.75;
* fat PD 0.9, muscle PD 0.75;
* white-matter lesion (demyelinating plaque): T1 = 1.6 x white matter, T2 150 ms, PD 0.85.

T2* (used only by the spoiled gradient echo)
--------------------------------------------
``1/T2* = 1/T2 + R2'`` with a reversible dephasing rate that grows linearly with
field strength, ``R2' = k * B0``.  For soft tissue k = 3.4 /s/T, which gives grey
matter T2* of 67 ms at 1.5 T and 50 ms at 3 T (literature: ~70-85 and ~45-55 ms);
lung has k = 200 /s/T (T2* ~ 3 ms at 1.5 T, air-tissue interfaces).  At the
echo times of the phantom's FLASH protocols (2-3.5 ms) T2* weighting is weak.

Gadolinium (AXT1POST)
---------------------
Contrast agent shortens relaxation as ``1/T1 = 1/T1_0 + r1 * C`` with relaxivity
r1 = 4.0 /s/mM at 1.5 T and 3.6 /s/mM at 3 T (Gd-DTPA-like, Rohrer et al. 2005),
interpolated in B0.  T2 shortening (r2) is neglected at these concentrations.
The concentrations per tissue are chosen by the anatomy (``brain.py``).

Signal equations (``DESIGN.md``), all vectorised over NumPy broadcasting
-------------------------------------------------------------------------
* spin echo / TSE:   ``PD (1 - e^(-TR/T1)) e^(-TE/T2)``
* inversion recovery (FLAIR): ``PD (1 - 2 e^(-TI/T1) + e^(-TR/T1)) e^(-TE/T2)``
  (its magnitude is the DESIGN formula; the signed value is what a voxel holds)
* spoiled GRE (FLASH): ``PD sin a (1 - E1) / (1 - cos a E1) e^(-TE/T2*)``, E1 = e^(-TR/T1)
* bSSFP (on resonance): ``PD sin a (1 - E1) e^(-TE/T2) / (1 - (E1 - E2) cos a - E1 E2)``,
  E2 = e^(-TR/T2); at TE = TR/2 the echo factor is ``sqrt(E2)``, the DESIGN formula.

The TSE equations ignore the refocusing flip angle and the echo train (the
header still records both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from metamri.phantom.protocols import Protocol

_B0_LOW, _B0_HIGH = 1.5, 3.0
#: Reversible dephasing rate per tesla for soft tissue, 1/s/T (see module docstring).
R2PRIME_PER_T = 3.4


@dataclass(frozen=True)
class Tissue:
    """Relaxation model of one tissue.

    Attributes:
        name: Key in :data:`TISSUES`.
        pd: Proton density relative to water.
        t1_a: A of ``T1 = A * B0**C``, seconds.
        t1_c: C of the power law (0 for a field-independent T1).
        t2_ms: T2 at 1.5 T and at 3 T, ms (equal for a field-independent T2).
        r2prime_per_t: Reversible dephasing rate per tesla, 1/s/T (T2* = 1/(1/T2 + k B0)).
    """

    name: str
    pd: float
    t1_a: float
    t1_c: float
    t2_ms: tuple[float, float]
    r2prime_per_t: float = R2PRIME_PER_T

    def t1(self, b0: float) -> float:
        """T1 in ms at field strength ``b0`` (tesla)."""
        return 1000.0 * self.t1_a * float(b0) ** self.t1_c

    def t2(self, b0: float) -> float:
        """T2 in ms at ``b0``: linear between the 1.5 T and 3 T values, clamped outside."""
        w = min(max((float(b0) - _B0_LOW) / (_B0_HIGH - _B0_LOW), 0.0), 1.0)
        return (1.0 - w) * self.t2_ms[0] + w * self.t2_ms[1]

    def t2star(self, b0: float) -> float:
        """T2* in ms at ``b0``: ``1/T2* = 1/T2 + r2prime_per_t * B0`` (rates in 1/ms)."""
        return 1.0 / (1.0 / self.t2(b0) + self.r2prime_per_t * float(b0) / 1000.0)


def _power_law_through(t1_low_ms: float, t1_high_ms: float) -> tuple[float, float]:
    """(A [s], C) of ``T1 = A B0^C`` through T1 at 1.5 T and at 3 T."""
    c = math.log(t1_high_ms / t1_low_ms) / math.log(_B0_HIGH / _B0_LOW)
    return t1_low_ms / 1000.0 / _B0_LOW**c, c


def _tabulated(name: str, pd: float, t1_ms: tuple[float, float], t2_ms: tuple[float, float], **kw) -> Tissue:
    a, c = _power_law_through(*t1_ms)
    return Tissue(name, pd, a, c, t2_ms, **kw)


#: The tissue table.  Brain: gm, wm, csf, fat, muscle, blood (Gach venous blood), lesion.
#: Thorax: myocardium, blood_pool (ventricular blood), lung, liver, fat, muscle.
TISSUES: dict[str, Tissue] = {
    t.name: t
    for t in (
        Tissue("gm", 0.86, 0.857, 0.376, (100.0, 100.0)),
        Tissue("wm", 0.77, 0.583, 0.382, (80.0, 80.0)),
        Tissue("csf", 1.00, 4.2, 0.0, (1990.0, 1990.0)),
        Tissue("fat", 0.90, 0.324, 0.137, (70.0, 70.0)),
        Tissue("muscle", 0.75, 1.05, 0.0, (50.0, 50.0)),
        Tissue("blood", 0.95, 1.35, 0.34, (200.0, 200.0)),
        Tissue("lesion", 0.85, 1.6 * 0.583, 0.382, (150.0, 150.0)),
        _tabulated("myocardium", 0.80, (1008.0, 1220.0), (44.0, 47.0)),
        _tabulated("blood_pool", 0.95, (1441.0, 1932.0), (290.0, 275.0)),
        _tabulated("lung", 0.15, (1200.0, 1350.0), (40.0, 40.0), r2prime_per_t=200.0),
        _tabulated("liver", 0.75, (586.0, 809.0), (46.0, 34.0)),
    )
}


def tissue(name: str) -> Tissue:
    """The :class:`Tissue` called ``name``; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return TISSUES[name]
    except KeyError:
        raise KeyError(f"unknown tissue {name!r}; known: {', '.join(TISSUES)}") from None


@dataclass(frozen=True)
class Relaxation:
    """PD and relaxation times of one tissue at one field strength (ms)."""

    pd: float
    t1: float
    t2: float
    t2star: float


def gadolinium_r1(b0: float) -> float:
    """Longitudinal relaxivity of the contrast agent, 1/s/mM, at ``b0`` tesla."""
    w = min(max((float(b0) - _B0_LOW) / (_B0_HIGH - _B0_LOW), 0.0), 1.0)
    return (1.0 - w) * 4.0 + w * 3.6


def relaxation(name: str, b0: float, gd_mM: float = 0.0) -> Relaxation:
    """PD, T1, T2, T2* (ms) of tissue ``name`` at ``b0`` tesla with ``gd_mM`` mM of gadolinium.

    >>> round(relaxation("gm", 1.5).t1)
    998
    >>> relaxation("wm", 3.0).t1 > relaxation("wm", 1.5).t1
    True
    """
    t = tissue(name)
    t1 = t.t1(b0)
    if gd_mM < 0:
        raise ValueError(f"gadolinium concentration must be >= 0 mM, got {gd_mM}")
    if gd_mM:
        t1 = 1.0 / (1.0 / t1 + gadolinium_r1(b0) * gd_mM / 1000.0)
    return Relaxation(t.pd, t1, t.t2(b0), t.t2star(b0))


# -- signal equations ------------------------------------------------------------------------


def spin_echo(pd, t1, t2, *, tr, te):
    """Spin echo / turbo spin echo: ``PD (1 - e^(-TR/T1)) e^(-TE/T2)``.

    Args:
        pd, t1, t2: Proton density, T1 (ms), T2 (ms); scalars or broadcastable arrays.
        tr: Repetition time, ms.
        te: (Effective) echo time, ms.

    Returns:
        float64 array (or scalar) of the transverse magnetisation at the echo.
    """
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd, t1, t2, *, tr, te, ti, signed: bool = False):
    """Inversion recovery spin echo (FLAIR): ``PD |1 - 2 e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2)``.

    Args:
        pd, t1, t2: Proton density, T1 (ms), T2 (ms).
        tr, te, ti: Repetition, echo and inversion times, ms.
        signed: Return the signed longitudinal term (negative for tissue not yet
            through its null point) instead of its magnitude; a voxel's complex
            signal is the sum of the signed tissue signals.

    Returns:
        float64 array (or scalar).
    """
    mz = 1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)
    if not signed:
        mz = np.abs(mz)
    return pd * mz * np.exp(-te / t2)


def null_inversion_time(t1, tr):
    """TI (ms) that nulls a tissue of longitudinal relaxation ``t1`` (ms) at repetition ``tr`` (ms).

    Solves ``1 - 2 e^(-TI/T1) + e^(-TR/T1) = 0``: ``TI = T1 ln(2 / (1 + e^(-TR/T1)))``.
    CSF (T1 4200 ms) at TR 9000 ms: 2445 ms.
    """
    return t1 * np.log(2.0 / (1.0 + np.exp(-tr / t1)))


def spoiled_gre(pd, t1, t2star, *, tr, te, flip):
    """Spoiled gradient echo (FLASH): ``PD sin a (1 - E1) / (1 - cos a E1) e^(-TE/T2*)``.

    Args:
        pd, t1, t2star: Proton density, T1 (ms), T2* (ms).
        tr, te: Repetition and echo times, ms.
        flip: Flip angle a, degrees.

    Returns:
        float64 array (or scalar).
    """
    a = np.deg2rad(flip)
    e1 = np.exp(-tr / t1)
    return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-te / t2star)


def bssfp(pd, t1, t2, *, tr, flip, te=None):
    """Balanced SSFP (TrueFISP), on resonance, steady state.

    ``PD sin a (1 - E1) e^(-TE/T2) / (1 - (E1 - E2) cos a - E1 E2)``, E1 = e^(-TR/T1),
    E2 = e^(-TR/T2); with the default TE = TR/2 the echo factor is ``sqrt(E2)``.

    Args:
        pd, t1, t2: Proton density, T1 (ms), T2 (ms).
        tr: Repetition time, ms.
        flip: Flip angle, degrees.
        te: Echo time, ms; ``None`` means TR/2.

    Returns:
        float64 array (or scalar).
    """
    a = np.deg2rad(flip)
    te = tr / 2.0 if te is None else te
    e1, e2 = np.exp(-tr / t1), np.exp(-tr / t2)
    return pd * np.sin(a) * (1.0 - e1) * np.exp(-te / t2) / (1.0 - (e1 - e2) * np.cos(a) - e1 * e2)


#: Sequence names as fastMRI / Siemens headers write them.
SEQUENCES = ("TurboSpinEcho", "Flash", "TrueFISP")


def sequence_signal(
    rel: Relaxation,
    *,
    sequence: str,
    tr: float,
    te: float,
    flip: float,
    ti: float | None = None,
    signed: bool = True,
) -> float:
    """Signal of one tissue for one protocol.

    Args:
        rel: The tissue's PD and relaxation times (ms).
        sequence: ``"TurboSpinEcho"`` (inversion recovery when ``ti`` is given),
            ``"Flash"`` or ``"TrueFISP"``.
        tr, te: ms.  flip: degrees.  ti: inversion time in ms, or ``None``.
        signed: Keep the sign of an inversion-recovery signal.

    Returns:
        The real signal value (float).
    """
    if sequence == "TurboSpinEcho":
        if ti is None:
            return float(spin_echo(rel.pd, rel.t1, rel.t2, tr=tr, te=te))
        return float(inversion_recovery(rel.pd, rel.t1, rel.t2, tr=tr, te=te, ti=ti, signed=signed))
    if sequence == "Flash":
        return float(spoiled_gre(rel.pd, rel.t1, rel.t2star, tr=tr, te=te, flip=flip))
    if sequence == "TrueFISP":
        return float(bssfp(rel.pd, rel.t1, rel.t2, tr=tr, flip=flip, te=te))
    raise ValueError(f"unknown sequence {sequence!r}; known: {', '.join(SEQUENCES)}")


def component_signals(protocol: Protocol, components: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """Signed signal of each phantom component under ``protocol``.

    Args:
        protocol: A :class:`~metamri.phantom.protocols.Protocol` (sequence, TR, TE,
            TI, flip, field strength, gadolinium).
        components: component name -> (tissue name, gadolinium concentration in
            mM, applied only when ``protocol.gadolinium``).

    Returns:
        component name -> signal (float).
    """
    out = {}
    for comp, (name, gd) in components.items():
        rel = relaxation(name, protocol.field_strength, gd if protocol.gadolinium else 0.0)
        out[comp] = sequence_signal(
            rel, sequence=protocol.sequence, tr=protocol.tr, te=protocol.te, flip=protocol.flip, ti=protocol.ti
        )
    return out
