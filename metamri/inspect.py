"""``python -m metamri.inspect PATH [PATH ...] [--sidecar CSV]``: what metamri reads from a file.

Prints one JSON object per file per line (:meth:`metamri.data.readers.VolumeFile.describe`:
format, shapes, patient and every metadata field, ``null`` where missing).  A file
that cannot be read gives one line ``error: <file>: <field>: <problem>`` on
stderr; the other files are still inspected and the exit status is 1.

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
from metamri.errors import MetamriError


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
    return parser


def inspect_file(path: str, sidecar: str | None = None) -> dict:
    """``describe()`` of one file (the sidecar applies to cine files only)."""
    kwargs = {"sidecar": sidecar} if sidecar and detect_format(path) == "cmrxrecon_cine" else {}
    return open_volume(path, **kwargs).describe()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0: all files read, 1: some failed)."""
    args = build_parser().parse_args(argv)
    failed = 0
    for path in args.paths:
        try:
            info = inspect_file(path, args.sidecar)
        except MetamriError as exc:
            message = " ".join(str(exc).split())  # always one line
            print(f"error: {message}", file=sys.stderr, flush=True)
            failed += 1
            continue
        print(json.dumps(info), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
