#!/usr/bin/env bash
# Lint, format and types (run by scripts/test.sh, so by CI; versions pinned in requirements-lint.txt): ruff's formatter and linter over the
# package, tests, benchmarks and scripts (the example project is linted but not reformatted: its files
# are hashed into the README's example outputs), then mypy over the package (pyproject.toml: default
# mode everywhere, mypy's strict flags on the pure modules).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m ruff format --check --quiet pytest_forgetting tests benchmarks scripts
"$PY" -m ruff check --quiet pytest_forgetting tests benchmarks scripts example_project
"$PY" -m mypy --no-error-summary
echo "lint: ruff format, ruff check and mypy clean"
