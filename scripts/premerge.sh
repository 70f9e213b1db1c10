#!/usr/bin/env bash
# The example model repo's pre-merge check: set up, build the example checkpoints if missing,
# and gate the fine-tuned checkpoint on what the base could do. Prints the summary table and
# writes example_project/forgetting-report.{json,md}. The naive fine-tune is expected to FAIL
# its MNIST retention checks: that is the regression this plugin exists to catch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python example_project/build_checkpoints.py
exec .venv/bin/python -m pytest example_project -p no:cacheprovider \
    --base-ckpt=example_project/checkpoints/base.safetensors \
    --tuned-ckpt=example_project/checkpoints/tuned.safetensors "$@"
