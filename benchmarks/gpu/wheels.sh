#!/usr/bin/env bash
# Fetch, here (where PyPI answers), the pure-Python wheels that the lent GPU machine's image lacks
# for the GPU figures (benchmarks/gpu/run.sh): its image has torch, lightning, peft, transformers,
# h5py, scipy and pytest, but not diffusers, omegaconf or ismrmrd (see the device tool's KINDS.md).
# Versions are those installed in this checkout's environment, so both machines run the same code.
# They land in .whl/ (git-ignored), which the device call carries:  carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
rm -rf .whl && mkdir -p .whl
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pkgs=()
for p in diffusers importlib_metadata lazy-importer omegaconf ismrmrd xsdata; do
  pkgs+=("$p==$(version "$p")")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --abi none --platform any -d .whl "${pkgs[@]}"
# antlr4-python3-runtime (omegaconf's parser) is an sdist only on PyPI: build its pure-Python wheel
"$PY" -m pip wheel --quiet --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -1 .whl
du -sh .whl
