"""Run every benchmark script in this folder (`make bench`); each writes its own
section of docs/benchmarks.md. Run on a quiet machine: timings on a shared CPU are noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the checkout's own package first, whatever an earlier `pip install -e` points at
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        args = ["--write"]
        if subprocess.run([sys.executable, str(script), *args], env=ENV).returncode:
            failed.append(script.name)
    if failed:
        sys.exit(f"benchmarks failed: {failed}")
