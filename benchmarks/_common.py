"""What every benchmark script shares: a description of the machine, the load average and
the writer that replaces one ``## Section`` of ``docs/benchmarks.md`` and leaves the others."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: cores, CPU, Python, torch (and its thread count), today's date."""
    import torch

    return (f"{os.cpu_count()} CPU cores ({cpu_name()}), Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); {time.strftime('%Y-%m-%d')}")


def load_average() -> float:
    """The 1-minute load average (``nan`` where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux
        return float("nan")


def write_section(section: str, text: str, doc: Path = DOC) -> None:
    """Replace ``section`` (from its heading up to the next ``## `` heading) in ``doc`` by
    ``text``, or append ``text`` when the section is not there yet."""
    old = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new.rstrip("\n") + "\n")
    print(f"wrote the '{section}' section of {doc}")
