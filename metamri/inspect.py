"""``python -m metamri.inspect PATH [PATH ...] [--sidecar CSV]``: what metamri reads from a file.

Prints one JSON object per file per line (:meth:`metamri.data.readers.VolumeFile.describe`:
format, shapes, patient and every metadata field, ``null`` where missing).  A file
that cannot be read (or whose k-space is empty along an axis: no coils) gives one line
``error: <file>: <field>: <problem>`` on stderr; the other files are still inspected and
the exit status is 1. By default only the header and shapes are read; ``--values`` also
reads every slice (and frame) as preprocessing would, so a NaN or inf in the k-space is
reported here, naming the slice, instead of when the file is preprocessed or reconstructed.

Example::

    $ python -m metamri.inspect data/file_brain_AXFLAIR_200_6002462.h5
    {"path": "...", "format": "fastmri_brain", ..., "metadata": {"contrast": "AXFLAIR", ...}}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from metamri.data.readers import detect_format, open_volume
from metamri.errors import DataFileError, MetamriError
from metamri.utils.cli import one_line


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m metamri.inspect",
        description="Print the shapes and metadata metamri reads from raw k-space files, "
        "one JSON object per line.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="fastMRI .h5 or CMRxRecon .mat files"
    )
    parser.add_argument(
        "--sidecar",
        metavar="CSV",
        default=None,
        help="cine metadata table for CMRxRecon files "
        "(default: the nearest cine_info.csv above the file)",
    )
    parser.add_argument(
        "--values",
        action="store_true",
        help="also read every slice and check its k-space values (NaN, inf); slower",
    )
    return parser


def inspect_file(path: str, sidecar: str | None = None, values: bool = False) -> dict:
    """``describe()`` of one file (the sidecar applies to cine files only).

    Args:
        path: A fastMRI ``.h5`` or CMRxRecon ``.mat`` file.
        sidecar: The cine metadata table.
        values: Also read every item (slice, or slice and frame); each is checked for
            non-finite k-space values by its reader.

    Raises:
        DataFileError: The file cannot be read, its k-space holds no coils, slices,
            frames or samples (nothing metamri could reconstruct from it), or (``values``)
            an item holds NaN or inf.
    """
    kwargs = {"sidecar": sidecar} if sidecar and detect_format(path) == "cmrxrecon_cine" else {}
    volume = open_volume(path, **kwargs)
    info = volume.describe()
    _check_usable(path, info)
    if values:
        for _ in volume:  # the reader raises on the first non-finite item
            pass
    return info


def _check_usable(path: str, info: dict) -> None:
    """Refuse a file whose k-space is empty along some axis (e.g. 0 coils)."""
    shape = [int(n) for n in info.get("shape") or []]
    for what in ("coils", "slices", "frames"):
        if what in info and int(info[what]) < 1:
            raise DataFileError(path, f"the k-space has no {what} (shape {tuple(shape)})", field="kspace")
    if shape and min(shape) < 1:
        raise DataFileError(path, f"the k-space is empty (shape {tuple(shape)})", field="kspace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0: all files read, 1: some failed)."""
    args = build_parser().parse_args(argv)
    failed = 0
    for path in args.paths:
        try:
            info = inspect_file(path, args.sidecar, values=args.values)
        except MetamriError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(json.dumps(info), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
