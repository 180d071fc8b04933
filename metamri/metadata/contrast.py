"""Contrast names: the fastMRI acquisition labels metamri records carry, and ContextMRI's.

A :class:`~metamri.metadata.record.Metadata` record stores the fastMRI
``acquisition`` attribute as its contrast (``"AXFLAIR"``); ContextMRI's metadata
tables, and therefore the prompts its released checkpoint was trained on, name
the contrast differently (``"FLAIR"``).  This table maps one to the other, both
ways (DoHunLee1/ContextMRI, ``assets/fastmri/{brain,knee}/metadata_val.csv``:
every file name's acquisition goes with exactly one contrast name there).

Labels outside the table (``"CINE"``, a site's own label) pass through unchanged.
"""

from __future__ import annotations

#: fastMRI acquisition label -> ContextMRI contrast name.
CONTEXTMRI_CONTRASTS: dict[str, str] = {
    "AXT1": "T1",
    "AXT1PRE": "T1 pre-contrast",
    "AXT1POST": "T1 post-contrast",
    "AXT2": "T2",
    "AXFLAIR": "FLAIR",
    # fastMRI knee (ContextMRI's knee table)
    "CORPD_FBK": "PD",
    "CORPDFS_FBK": "PDFS",
}
_ACQUISITIONS: dict[str, str] = {v: k for k, v in CONTEXTMRI_CONTRASTS.items()}


def contextmri_contrast(acquisition: str) -> str:
    """ContextMRI's name of a fastMRI acquisition label (unknown labels unchanged).

    >>> contextmri_contrast("AXT1POST"), contextmri_contrast("CINE")
    ('T1 post-contrast', 'CINE')
    """
    return CONTEXTMRI_CONTRASTS.get(acquisition, acquisition)


def acquisition_from_contextmri(name: str) -> str:
    """The fastMRI acquisition label of a ContextMRI contrast name (unknown names unchanged).

    >>> acquisition_from_contextmri("FLAIR"), acquisition_from_contextmri("CINE")
    ('AXFLAIR', 'CINE')
    """
    return _ACQUISITIONS.get(name, name)
