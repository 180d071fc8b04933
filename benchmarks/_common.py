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


def run_in_child(script: Path, case: dict, threads: int | None = None) -> dict:
    """Run ``script --case JSON`` in a fresh Python process and return the dict it prints last.

    One figure per process, so that each peak memory (``ru_maxrss``, or the CUDA allocator's
    peak) is that figure's alone and not the largest of everything run before it.
    """
    import json
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(script), "--case", json.dumps(case)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(script.parent), env=env)
    if proc.returncode:
        raise RuntimeError(f"{script.name} --case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def current_rss_mib() -> float:
    """This process's resident memory now (``/proc/self/status`` VmRSS), MiB; ``nan`` elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_memory_mib(device: str) -> float:
    """The process's peak memory so far, MiB: the CUDA allocator's peak on a GPU, else ``ru_maxrss``."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
