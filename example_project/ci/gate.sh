#!/usr/bin/env bash
# The pre-merge forgetting gate, as .github/workflows/forgetting.yml runs it (and as
# tests/hostile/test_pull_request.py runs it against a simulated hostile pull request).
#
# Trust model: GATE_BASE is a checkout of the BASE branch (trusted: this script, the tests,
# pyproject.toml and every other config file, conftests, the model code, the base checkpoint or
# the script that builds it). GATE_PR is a checkout of the pull request: UNTRUSTED DATA. Nothing in
# it is executed, imported or read as configuration; only the tuned checkpoint file(s) named in
# GATE_TUNED are copied out of it, into a data folder, and handed to pytest as data.
#
# Always run the base branch's copy of this script: bash "$GATE_BASE/ci/gate.sh" [PYTEST ARGS...]
#
# Environment:
#   GATE_BASE       base-branch checkout (required)
#   GATE_PR         pull-request checkout; empty: the base checkpoint is gated against itself
#                   (a sanity check of the contract that also fills the cache)
#   GATE_OUT        folder for the data copy and the reports (default ./gate-out); outside GATE_PR
#   GATE_TUNED      the PR's tuned checkpoint(s), paths inside GATE_PR, space-separated
#                   (default checkpoints/tuned.safetensors); a file or a model folder each
#   GATE_BASE_CKPT  the base checkpoint inside GATE_BASE (default checkpoints/base.safetensors);
#                   when the base branch does not commit it, GATE_BASE's build_checkpoints.py
#                   builds it into the data folder (base-branch code, never the PR's)
#   GATE_CONFIG     the base branch's pytest config file (default pyproject.toml)
#   GATE_TESTS      test paths inside GATE_BASE (default tests)
#   GATE_PYTHON     the Python with pytest-forgetting installed (default python)
#   FORGETTING_CACHE_DIR  the cache of base evaluations (default ~/.cache/pytest-forgetting)
# Extra arguments go to pytest (the workflow's own, e.g. -n 2).
# Exit status: pytest's (0 every check passed, 1 a check failed or errored, >1 the run broke).

set -euo pipefail
umask 022

fail() { printf 'gate: %s\n' "$*" >&2; exit 2; }

[ -n "${GATE_BASE:-}" ] || fail "GATE_BASE (the base-branch checkout) is not set"
base=$(cd -- "$GATE_BASE" && pwd -P) || fail "GATE_BASE=$GATE_BASE is not a folder"
py=${GATE_PYTHON:-python}
config="$base/${GATE_CONFIG:-pyproject.toml}"
[ -f "$config" ] || fail "the base branch has no ${GATE_CONFIG:-pyproject.toml}"
mkdir -p -- "${GATE_OUT:-$PWD/gate-out}"
out=$(cd -- "${GATE_OUT:-$PWD/gate-out}" && pwd -P)
cache=${FORGETTING_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pytest-forgetting}

pr=""
if [ -n "${GATE_PR:-}" ]; then
    pr=$(cd -- "$GATE_PR" && pwd -P) || fail "GATE_PR=$GATE_PR is not a folder"
    case "$out/" in "$pr"/*) fail "GATE_OUT must not be inside the pull request's checkout" ;; esac
    case "$base/" in "$pr"/*) fail "GATE_BASE must not be inside the pull request's checkout" ;; esac
fi

data="$out/data"
rm -rf -- "$data"
mkdir -p -- "$data/tuned"
rm -f -- "$out/forgetting-report.json" "$out/forgetting-report.md" "$out/junit.xml"

# Copy one checkpoint out of the PR checkout: a path inside it, no component a symlink (a link
# could point at the base checkout, the runner's files or /proc), a regular file or a folder.
# A folder is copied without following the links inside it; the plugin refuses any file of a
# checkpoint folder that resolves outside the folder.
copy_from_pr() {
    local rel=$1 rest walk part dest
    case "$rel" in
        "" | /* | ..* | */..* | *"/../"* ) fail "GATE_TUNED entry '$rel' is not a plain relative path" ;;
    esac
    walk=$pr
    rest=$rel
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        if [ "$part" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
        [ -n "$part" ] && [ "$part" != "." ] || continue
        walk="$walk/$part"
        [ ! -L "$walk" ] || fail "the pull request's $rel is (or goes through) a symlink: refused"
    done
    [ "$walk" != "$pr" ] || fail "GATE_TUNED entry '$rel' names the whole checkout"
    dest="$data/tuned/$(basename -- "$rel")"
    [ ! -e "$dest" ] || fail "two tuned checkpoints named $(basename -- "$rel")"
    if [ -f "$walk" ]; then
        cp -- "$walk" "$dest"
    elif [ -d "$walk" ]; then
        cp -R -P -- "$walk" "$dest"
    else
        fail "the pull request has no checkpoint at $rel (a regular file or a model folder)"
    fi
    printf '%s\n' "$dest"
}

# The base checkpoint: the base branch's own, or built by the base branch's own build script.
base_rel=${GATE_BASE_CKPT:-checkpoints/base.safetensors}
if [ -e "$base/$base_rel" ]; then
    base_ckpt="$base/$base_rel"
else
    [ -f "$base/build_checkpoints.py" ] || fail "the base branch has neither $base_rel nor build_checkpoints.py"
    printf 'gate: building the base checkpoint with the base branch'"'"'s build_checkpoints.py\n'
    (cd -- "$base" && PYTHONDONTWRITEBYTECODE=1 "$py" build_checkpoints.py --out "$data/built")
    base_ckpt="$data/built/$(basename -- "$base_rel")"
    [ -e "$base_ckpt" ] || fail "the base branch's build_checkpoints.py did not build $(basename -- "$base_rel")"
fi

tuned_args=()
if [ -n "$pr" ]; then
    read -r -a tuned_rels <<< "${GATE_TUNED:-checkpoints/tuned.safetensors}"
    [ "${#tuned_rels[@]}" -gt 0 ] || fail "GATE_TUNED names no checkpoint"
    for rel in "${tuned_rels[@]}"; do
        dest=$(copy_from_pr "$rel") || exit 2
        tuned_args+=("--tuned-ckpt=$dest")
    done
else
    tuned_args+=("--tuned-ckpt=$base_ckpt")
fi

read -r -a tests <<< "${GATE_TESTS:-tests}"

# pytest in the base checkout, with the base branch's config file and rootdir, no cache plugin,
# no addopts (from any ini file or the environment), conftests only below the base checkout.
unset PYTEST_ADDOPTS PYTEST_PLUGINS
export PYTHONDONTWRITEBYTECODE=1
cd -- "$base"
printf 'gate: base %s, tuned %s, config %s\n' "$base_ckpt" "${tuned_args[*]#--tuned-ckpt=}" "$config"
status=0
"$py" -m pytest "${tests[@]}" \
    "--config-file=$config" \
    "--rootdir=$base" \
    "--confcutdir=$base" \
    -p no:cacheprovider \
    "--override-ini=addopts=" \
    "--base-ckpt=$base_ckpt" \
    "${tuned_args[@]}" \
    "--forgetting-cache-dir=$cache" \
    "--forgetting-json=$out/forgetting-report.json" \
    "--forgetting-markdown=$out/forgetting-report.md" \
    "--junitxml=$out/junit.xml" \
    "$@" || status=$?
exit "$status"
