"""Read offline W&B runs without syncing them: ``python -m metamri.evaluation.wandb_offline DIR``.

An offline run (``<run dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``, written by
:mod:`metamri.evaluation.wandb_log` in the default ``wandb.mode: offline``) is a log of
protobuf records (``wandb.proto.wandb_internal_pb2.Record``) in W&B's block format: 32 KiB
blocks, each record split into chunks with a 7-byte header ``crc32 (4) | length (2) | type
(1)`` (type 1 full, 2 first, 3 middle, 4 last; a block's tail shorter than a header is
padding), after a 7-byte file header ``:W&B`` + version. :func:`read_offline_run` returns
the run record's name, group and id, the config, the summary and the history rows;
:func:`list_runs` does it for every offline run under a directory, so a multirun
(``metamri.evaluate -m``) can be checked as the separate, grouped runs W&B will show after
``wandb sync``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

#: W&B's log block size and chunk header layout.
BLOCK = 32768
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[bytes]:
    """The raw records of a ``run-<id>.wandb`` file, in order.

    Raises:
        ValueError: The file does not start with W&B's magic ``:W&B``.
    """
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run log (no ':W&B' header)")
    pos, out, buf = 7, [], b""
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left - HEADER.size
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            out.append(buf)
            buf = b""
    return out


def is_complete(run_dir: str | Path) -> bool:
    """Whether the offline run's log ends with its ``exit`` record, i.e. W&B's writer has
    flushed and closed it (``wandb.finish`` can return a moment before it has)."""
    from wandb.proto import wandb_internal_pb2 as pb

    paths = list(Path(run_dir).glob("run-*.wandb"))
    if len(paths) != 1:
        return False
    try:
        raws = records(paths[0])
    except (OSError, ValueError):
        return False
    if not raws:
        return False
    last = pb.Record()
    try:
        last.ParseFromString(raws[-1])
    except Exception:  # a record cut by a write in progress
        return False
    return last.WhichOneof("record_type") == "exit"


def wait_until_complete(run_dir: str | Path, timeout_s: float = 30.0, poll_s: float = 0.05) -> bool:
    """Wait (at most ``timeout_s`` seconds) until :func:`is_complete`; returns whether it is."""
    deadline = time.monotonic() + timeout_s
    while not is_complete(run_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"id", "name", "group", "project", "job_type", "tags", "config", "summary", "history"}``
    of one offline run.

    Args:
        run_dir: An ``offline-run-*`` directory (holding one ``run-*.wandb``).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict[str, Any] = {"id": None, "name": None, "group": None, "project": None, "job_type": None,
                           "tags": [], "config": {}, "summary": {}, "history": []}
    for raw in records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            out.update(id=run.run_id, name=run.display_name, group=run.run_group, project=run.project,
                       job_type=run.job_type, tags=list(run.tags))
            out["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            for u in rec.summary.update:
                *parents, leaf = [u.key] if u.key else list(u.nested_key)
                node = out["summary"]
                for k in parents:
                    node = node.setdefault(k, {})
                node[leaf] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append({(u.key or ".".join(u.nested_key)): json.loads(u.value_json)
                                   for u in rec.history.item})
    out["config"].pop("_wandb", None)
    return out


def list_runs(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every offline run under ``root`` (searched recursively), sorted by path."""
    return [(d, read_offline_run(d)) for d in sorted(Path(root).rglob("offline-run-*")) if d.is_dir()]


def main(argv: list[str] | None = None) -> int:
    """List the offline runs under a directory: name, group, id, config and summary keys."""
    parser = argparse.ArgumentParser(prog="python -m metamri.evaluation.wandb_offline",
                                     description="List offline W&B runs (name, group, config, summary).")
    parser.add_argument("root", help="a directory holding offline-run-* directories (searched recursively)")
    parser.add_argument("--values", action="store_true", help="print config and summary values, not only keys")
    args = parser.parse_args(argv)
    runs = list_runs(args.root)
    if not runs:
        print(f"error: no offline-run-* directory under {args.root}", file=sys.stderr)
        return 1
    for path, run in runs:
        print(f"{path}: name={run['name']} group={run['group']} id={run['id']} project={run['project']}")
        summary = {k: v for k, v in run["summary"].items() if not k.startswith("_")}
        if args.values:
            print("  config: " + json.dumps(run["config"], sort_keys=False))
            print("  summary: " + json.dumps(summary, sort_keys=False, default=str))
        else:
            print("  config keys: " + ", ".join(run["config"]))
            print("  summary keys: " + ", ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
