"""Raw k-space files and typed samples.

* :mod:`~metamri.data.readers`: :class:`VolumeFile`, the one interface over every
  format, and :func:`open_volume`, which picks the format of a path.
* :mod:`~metamri.data.fastmri_file`: fastMRI brain multi-coil ``.h5`` (reader and writer).
* :mod:`~metamri.data.cmrxrecon_file`: CMRxRecon cine MATLAB v7.3 ``.mat`` (reader,
  writer) and its metadata sidecar table ``cine_info.csv``.
* :mod:`~metamri.data.ismrmrd_header`: the ISMRMRD XML header fields metamri uses.
* :mod:`~metamri.data.sample`: :class:`KSpaceSlice`, one slice with its metadata.
"""

from metamri.data.cmrxrecon_file import (
    CMRxReconCineFile,
    find_sidecar,
    read_cine_sidecar,
    write_cine_sidecar,
    write_cmrxrecon_cine,
)
from metamri.data.fastmri_file import FastMRIBrainFile, write_fastmri_brain
from metamri.data.ismrmrd_header import HeaderInfo, build_header, parse_document, parse_header
from metamri.data.readers import VolumeFile, detect_format, open_volume
from metamri.data.sample import KSpaceSlice

__all__ = [
    "CMRxReconCineFile",
    "FastMRIBrainFile",
    "HeaderInfo",
    "KSpaceSlice",
    "VolumeFile",
    "build_header",
    "detect_format",
    "find_sidecar",
    "open_volume",
    "parse_document",
    "parse_header",
    "read_cine_sidecar",
    "write_cine_sidecar",
    "write_cmrxrecon_cine",
    "write_fastmri_brain",
]
