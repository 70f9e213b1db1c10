#!/usr/bin/env bash
# Set up the environment and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# ruff (format and lint) and mypy, at the versions of requirements-lint.txt: a finding stops the run here
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-lint.txt
bash scripts/lint.sh
# pytest-randomly for the compatibility matrix only: installed in .venv it would reorder every run
if [ ! -d .venv/compat-plugins/pytest_randomly ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps \
        --target .venv/compat-plugins "pytest-randomly>=3.15"
fi

# The built wheel on the lowest supported Python (3.10) without torch: `python -m build` makes an
# sdist and a wheel from it, scripts/check_dist.py checks they hold every package file and the pytest11
# entry point, and the wheel (not the source tree) is installed in a fresh venv that runs
# tests/unit/test_torchfree.py: plugin import, options, declarations, statistics (--noconftest: the file
# needs none of the suite's conftests). Without python3.10 the same runs on a fresh python3.11 venv.
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
if ! PYW=$(find_python310); then
    PYW=$(command -v python3.11 || true)
    [ -n "$PYW" ] || PYW=.venv/bin/python
    echo "note: no python3.10 found (set PYTHON310=...): the wheel smoke test runs on $("$PYW" --version)"
fi
ROOT=$PWD
DIST=$(mktemp -d)
.venv/bin/python -m build --outdir "$DIST" . >"$DIST/build.log" 2>&1 || { cat "$DIST/build.log"; exit 1; }
.venv/bin/python scripts/check_dist.py "$DIST"
rm -rf .venv/wheel-smoke
"$PYW" -m venv .venv/wheel-smoke
PIPW=(.venv/wheel-smoke/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt)
"${PIPW[@]}" pytest numpy scipy hypothesis filelock "tomli>=1.1"
"${PIPW[@]}" --no-deps "$DIST"/*.whl
# from outside the clone, so that `import pytest_forgetting` can only find the installed wheel
(cd "$DIST" && FORGETTING_WHEEL_SMOKE="$ROOT" "$ROOT"/.venv/wheel-smoke/bin/python -m pytest "$ROOT"/tests/unit/test_torchfree.py \
    --rootdir "$ROOT" --noconftest -p no:cacheprovider -q)
rm -rf "$DIST"

# one torch thread per xdist worker: two workers with two threads each oversubscribe 2 cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest tests -p no:cacheprovider -n 2 -q "$@"
