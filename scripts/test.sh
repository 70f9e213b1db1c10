#!/usr/bin/env bash
# Set up the environment and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest-randomly for the compatibility matrix only: installed in .venv it would reorder every run
if [ ! -d .venv/compat-plugins/pytest_randomly ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps \
        --target .venv/compat-plugins "pytest-randomly>=3.15"
fi

# The lowest supported Python (3.10) without torch: plugin import, options, declarations and
# statistics (tests/test_torchfree.py; --noconftest because tests/conftest.py imports torch).
find_python310() {
    local c
    for c in "${PYTHON310:-}" python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10; do
        if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
if PY310=$(find_python310); then
    [ -x .venv/py310/bin/python ] || "$PY310" -m venv .venv/py310
    PIP310=(.venv/py310/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
    "${PIP310[@]}" pytest numpy scipy hypothesis filelock "tomli>=1.1"
    "${PIP310[@]}" --no-deps -e .
    .venv/py310/bin/python -m pytest tests/test_torchfree.py --noconftest -p no:cacheprovider -q
else
    echo "note: no python3.10 found (set PYTHON310=...): the torch-free tier runs on $(.venv/bin/python --version) only"
fi

# one torch thread per xdist worker: two workers with two threads each oversubscribe 2 cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest tests -p no:cacheprovider -n 2 -q "$@"
