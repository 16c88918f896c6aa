#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on the GPU machine (which reaches no package index):
# the pins of scripts/gpu_wheels.txt, for CPython 3.12 on manylinux x86-64, without dependencies (the image has
# them), into an ignored folder that the device call carries (`carry: ["out/gpu_wheels"]`, ~28 MB of the
# 64 MiB that travel). Run it here, where pip reaches PyPI; safe to re-run (the folder is replaced whole, so it
# never holds two versions of a package).
#   bash scripts/gpu_wheels.sh [DIR]           (default out/gpu_wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-out/gpu_wheels}"
PYTHON="${PYTHON:-python3}"
PY_VERSION="${GPU_PYTHON_VERSION:-3.12}"
mapfile -t PINS < <(grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$')
TMP="$(mktemp -d "${TMPDIR:-/tmp}/gpu_wheels.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# pip matches each manylinux_2_N tag exactly: list the ones these wheels are built for.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$TMP" "${PINS[@]}"
count=$(find "$TMP" -name '*.whl' | wc -l)
if [ "$count" -ne "${#PINS[@]}" ]; then
  echo "gpu_wheels: expected ${#PINS[@]} wheels (${PINS[*]}), got $count in $TMP" >&2
  exit 1
fi
mkdir -p "$(dirname "$DIR")"
rm -rf "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
echo "gpu_wheels: $count wheels, $(du -sh "$DIR" | cut -f1) in $DIR:"
ls -1 "$DIR"
if ! git check-ignore -q "$DIR" 2>/dev/null; then
  echo "gpu_wheels: warning: $DIR is not ignored by git, so it would travel uncarried and be committed" >&2
fi
