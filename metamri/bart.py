"""The project's one interface to the BART command-line tools (https://mrirecon.github.io/bart).

BART (the Debian package ``bart``, v0.8) has no Python wrapper here: we talk to it
through its ``.cfl``/``.hdr`` file pair.

File format (``<stem>.hdr`` + ``<stem>.cfl``):

* ``<stem>.hdr`` is text: a ``# Dimensions`` line, then one line of
  space-separated dimension sizes (BART writes 16, padded with 1).
* ``<stem>.cfl`` is the raw data: complex64 (interleaved little-endian float32
  real/imag), in **Fortran (column-major) order**, so dimension 0 varies fastest.

BART's dimension convention (``bart`` ``misc/mri.h``): dim 0 = readout (x),
1 = phase encode (y), 2 = partition/slice (z), 3 = coils, 4 = ESPIRiT maps,
5 = echoes / time, ... A per-slice k-space of this project, laid out
(coils, readout, phase), is therefore ``kspace.transpose(1, 2, 0)[:, :, None, :]``
in BART's layout (readout, phase, 1, coils).

Example:
    >>> import numpy as np
    >>> from metamri.bart import bart_available, run_bart
    >>> x = np.ones((4, 4), np.complex64)
    >>> if bart_available():   # unitary, centred 2-D FFT along dims 0 and 1 (bitmask 3)
    ...     (k,) = run_bart(["fft", "-u", "3"], [x])
    ...     assert np.isclose(k[2, 2], 4)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from metamri.errors import DataFileError, MetamriError

#: Number of dimensions BART uses internally (``DIMS`` in BART's ``misc/mri.h``).
BART_DIMS = 16
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: Named BART dimensions (index into a BART array's shape).
READ_DIM, PHS1_DIM, PHS2_DIM, COIL_DIM, MAPS_DIM = 0, 1, 2, 3, 4


class BartError(MetamriError, RuntimeError):
    """BART is missing, or a BART command failed (the message carries BART's stderr)."""


def bart_executable() -> str | None:
    """Path of the ``bart`` executable on ``PATH`` (``$BART`` overrides), or ``None``."""
    return shutil.which(os.environ.get("BART", "bart"))


def bart_available() -> bool:
    """Whether the ``bart`` command-line tool can be run."""
    return bart_executable() is not None


# -- .cfl / .hdr ------------------------------------------------------------------------------


def _stem(stem: str | PathLike[str]) -> Path:
    """``stem`` without a ``.cfl``/``.hdr`` suffix (BART names files by their stem)."""
    p = Path(stem)
    return p.with_suffix("") if p.suffix in (".cfl", ".hdr") else p


def _with(stem: Path, suffix: str) -> Path:
    """``<stem><suffix>`` (not ``with_suffix``: a stem may contain dots, e.g. ``scan.v2``)."""
    return stem.with_name(stem.name + suffix)


def write_cfl(stem: str | PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as BART's ``<stem>.hdr`` / ``<stem>.cfl`` pair.

    Args:
        stem: File name without extension (a ``.cfl``/``.hdr`` suffix is dropped).
        array: Any numeric array with at most 16 dimensions; stored as complex64
            in Fortran order, its shape as BART's dimensions (padded with 1).

    Raises:
        ValueError: More than 16 dimensions.
    """
    stem = _stem(stem)
    array = np.asarray(array)
    if array.ndim > BART_DIMS:
        raise ValueError(f"BART arrays have at most {BART_DIMS} dimensions, got shape {array.shape}")
    dims = list(array.shape) + [1] * (BART_DIMS - array.ndim)
    _with(stem, ".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + " \n")
    data = np.asarray(array, dtype=np.complex64)
    with open(_with(stem, ".cfl"), "wb") as fh:
        # ravel(order="F") makes dim 0 the fastest-varying, as BART expects
        data.ravel(order="F").astype("<c8", copy=False).tofile(fh)


def read_cfl(stem: str | PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read BART's ``<stem>.hdr`` / ``<stem>.cfl`` pair.

    Args:
        stem: File name without extension.
        ndim: Number of dimensions to return. ``None`` drops trailing singleton
            dimensions (keeping at least one), as BART's own ``cfl.py`` does; an
            integer keeps exactly that many (the dropped ones must be 1).

    Returns:
        complex64 array of the header's shape (C-contiguous copy).

    Raises:
        DataFileError: Missing or malformed header, or a data file of the wrong size.
    """
    stem = _stem(stem)
    hdr, cfl = _with(stem, ".hdr"), _with(stem, ".cfl")
    if not hdr.is_file():
        raise DataFileError(hdr, "no such BART header file")
    lines = [ln.strip() for ln in hdr.read_text().splitlines()]
    try:
        at = lines.index("# Dimensions")
        dims = [int(d) for d in lines[at + 1].split()]
    except (ValueError, IndexError):
        raise DataFileError(
            hdr, "malformed BART header", field="# Dimensions", value=lines[:2],
            hint="expected a '# Dimensions' line followed by integer sizes",
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise DataFileError(hdr, "dimensions must be positive integers", field="# Dimensions", value=dims)
    count = int(np.prod(dims))
    if not cfl.is_file():
        raise DataFileError(cfl, "no such BART data file")
    size = cfl.stat().st_size
    if size != 8 * count:
        raise DataFileError(
            cfl, f"holds {size} bytes, expected {8 * count} (complex64 of dims {dims})", field="size", value=size
        )
    data = np.fromfile(cfl, dtype="<c8", count=count).astype(np.complex64, copy=False)
    if ndim is None:
        keep = max((i + 1 for i, d in enumerate(dims) if d != 1), default=1)
    else:
        if any(d != 1 for d in dims[ndim:]):
            raise DataFileError(hdr, f"cannot read as {ndim} dimensions", field="# Dimensions", value=dims)
        keep = ndim
        dims = dims + [1] * max(0, ndim - len(dims))
    # dropping singleton axes never reorders elements
    return np.ascontiguousarray(data.reshape(dims, order="F").reshape(dims[:keep]))


# -- running commands -------------------------------------------------------------------------


def run_bart(
    args: Sequence[str],
    inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray] = (),
    n_outputs: int = 1,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[np.ndarray]:
    """Run one BART command on NumPy arrays in a temporary directory.

    The command line is ``bart <args...> <inputs...> <outputs...>``, BART's own
    order (e.g. ``bart pics -l1 -r 0.01 <kspace> <sens> <image>``). Arguments may
    also name files explicitly with placeholders: ``{name}`` for an input of a
    mapping, ``{in0}``, ``{in1}``... for inputs of a sequence, ``{out0}``... for
    outputs (e.g. ``["pics", "-p", "{weights}", ...]``); inputs and outputs not
    named by a placeholder are appended in order.

    Args:
        args: BART tool name and options, e.g. ``["ecalib", "-m1", "-r", "24"]``.
        inputs: Arrays in BART's dimension order (see module docstring), as a
            sequence (positional) or a name -> array mapping (insertion order).
        n_outputs: Number of output files to read back.
        timeout: Seconds before the command is killed (``None``: no limit).
        env: Extra environment variables (e.g. ``{"OMP_NUM_THREADS": "1"}``).

    Returns:
        The outputs as complex64 arrays, trailing singleton dimensions dropped.

    Raises:
        BartError: BART is not installed, the command failed (BART's stderr is in
            the message), timed out, or wrote no output.
    """
    exe = bart_executable()
    if exe is None:
        raise BartError("the BART command-line tool `bart` is not on PATH (Debian: apt-get install bart)")
    if not args:
        raise ValueError("run_bart needs a BART tool name, e.g. ['fft', '-u', '3']")
    named = dict(inputs) if isinstance(inputs, Mapping) else {f"in{i}": a for i, a in enumerate(inputs)}
    out_names = [f"out{i}" for i in range(n_outputs)]
    with tempfile.TemporaryDirectory(prefix="metamri-bart-") as tmp:
        files = {name: os.path.join(tmp, name) for name in [*named, *out_names]}
        for name, array in named.items():
            write_cfl(files[name], array)
        placeholders = {"{" + n + "}": f for n, f in files.items()}
        cmd = [placeholders.get(a, a) for a in map(str, args)]
        used = {a for a in args if a in placeholders}
        cmd += [files[n] for n in [*named, *out_names] if "{" + n + "}" not in used]
        run_env = None if env is None else {**os.environ, **env}
        try:
            proc = subprocess.run(
                [exe, *cmd], capture_output=True, text=True, timeout=timeout, env=run_env, check=False
            )
        except subprocess.TimeoutExpired:
            raise BartError(f"`bart {' '.join(map(str, args))}` timed out after {timeout} s") from None
        if proc.returncode != 0:
            detail = _ANSI.sub("", proc.stderr or proc.stdout).strip() or "(no output)"
            # one line, the temporary files by their names (in0.cfl), not the private path
            detail = " ".join(detail.replace(tmp + os.sep, "").split())
            raise BartError(
                f"`bart {' '.join(map(str, args))}` failed with exit code {proc.returncode}: {detail}"
            )
        outputs = []
        for name in out_names:
            if not os.path.exists(files[name] + ".hdr"):
                raise BartError(f"`bart {' '.join(map(str, args))}` wrote no output {name}")
            outputs.append(read_cfl(files[name]))
    return outputs
