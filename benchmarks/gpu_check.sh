#!/usr/bin/env bash
# benchmarks/gpu_check.sh - the GPU path of the recipe, checked and measured in one command (about 6 minutes
# on one H200). What it asserts and records: benchmarks/gpu_check.py's docstring; the summary lands in
# OUT/gpu.md, the text of benchmarks/results/gpu.md.
#
#   bash benchmarks/gpu_check.sh --wheels gpu_wheels --out OUT   # a GPU machine without network: install the
#                                                                # carried wheels offline, then run every stage
#   bash benchmarks/gpu_check.sh --out OUT                       # a GPU machine that already has the packages
#   bash benchmarks/gpu_check.sh --dry-run [--out OUT]           # CPU, toy sizes: CI runs it (tests/test_gpu_check.py)
#   bash benchmarks/gpu_check.sh --fetch-wheels gpu_wheels       # on a machine with PyPI: download/build the wheels
#                                                                # to carry (gitignored; ~40 MiB)
#
# The wheels: benchmarks/gpu_check_requirements.txt lists them, pinned to the versions this project verifies,
# for CPython 3.12 on x86-64 Linux (the lent GPU machines: torch 2.11 + CUDA already installed, no network).
# torch itself is never carried: the machine's CUDA build is used (pyproject.toml: torch >= 2.11). flash-attn
# has no wheel on PyPI (it compiles against the local torch with nvcc), so the check reports whether it is
# there and compares it with sdpa only when it is.
#
# Knobs: PYTHON (default .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=benchmarks/gpu_check_requirements.txt
OUT="" WHEELS="" FETCH="" DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --fetch-wheels) FETCH=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "ERROR: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# The wheels for the GPU machine, resolved for its Python and platform (not this machine's).
if [ -n "$FETCH" ]; then
  mkdir -p "$FETCH"
  target=(--python-version 3.12 --implementation cp --abi cp312 --only-binary=:all:
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
  grep -v -e '^#' -e '^deepspeed' -e '^$' "$REQUIREMENTS" > "$FETCH/.binary-requirements.txt"
  "$PYTHON" -m pip download --quiet --no-deps "${target[@]}" -d "$FETCH" -r "$FETCH/.binary-requirements.txt"
  # DeepSpeed ships an sdist only; its wheel is pure Python when no op is prebuilt (ENVIRONMENT.md).
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$FETCH" \
    "$(grep '^deepspeed' "$REQUIREMENTS")"
  rm -f "$FETCH/.binary-requirements.txt"
  du -sh "$FETCH"
  ls "$FETCH"
  exit 0
fi

if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || { echo "ERROR: --wheels $WHEELS is not a folder (make it with --fetch-wheels)" >&2; exit 1; }
  echo "[gpu_check] installing from $WHEELS (offline):" >&2
  ls "$WHEELS" >&2
  # pip keeps what is installed and satisfies the pins (torch above all) and takes the rest from the folder.
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" -r "$REQUIREMENTS"
fi

if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-$(mktemp -d -t gpu_check_dry.XXXXXX)}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  exec "$PYTHON" benchmarks/gpu_check.py --dry-run --out "$OUT"
fi
OUT=${OUT:-runs/gpu_check}
exec "$PYTHON" benchmarks/gpu_check.py --out "$OUT"
