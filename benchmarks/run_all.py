"""Run every benchmark script in this folder (`make bench`); each writes its own
section of docs/benchmarks.md. Run on a quiet machine: timings on a shared CPU are noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        args = ["--write"]
        if subprocess.run([sys.executable, str(script), *args]).returncode:
            failed.append(script.name)
    if failed:
        sys.exit(f"benchmarks failed: {failed}")
