#!/usr/bin/env bash
# The prepared device check (issue 15): on a machine with CUDA, in one pass of at most ~6 minutes,
#   tests              the test suite's `cuda` tests (tests/test_cuda.py: GPU-resident episode, bitwise rollback,
#                      cached reward = full forward in bf16 and fp32, checkpoints held on the CPU)
#   env                scripts/bench_env.py --shape qwen3-4b: cached / uncached step, rollback, peak GPU memory
#   kernels-wanda      scripts/bench_kernels.py --shape qwen3-4b: sequential Wanda, 128 x 2048 calibration tokens
#   compare            prune-gym compare --tasks none: uniform-wanda, owl-wanda, evo-search (a few generations)
#   kernels-sparsegpt  the same for SparseGPT (last: it gets whatever time the others left)
# on random:qwen3-4b (random weights built on the GPU in bf16, no packaged model), then writes its tables under
# $OUT (default out/gpu_check) and prints them. Exit status 0 only if every part passed.
#
#   bash scripts/gpu_check.sh --dry-run      # here, on CPU: random:qwen3-tiny, tiny sizes (tests/test_gpu_check.py)
#   bash scripts/gpu_wheels.sh               # here, once: the wheels the GPU machine lacks -> out/gpu_wheels
#   bash scripts/gpu_check.sh                # there: device tool run, carry ["out/gpu_wheels"], timeout_s 420
#   bash scripts/gpu_check.sh --parts kernels-sparsegpt --budget 340     # a rerun of one part
#
# Options: --dry-run; --parts a,b (default all, in the order above); --budget SECONDS for the whole pass (default
# 340 on the GPU, 1500 in the dry run). Each part runs under `timeout`: its cap, or whatever is left of the
# budget if less; the last part run gets all that is left. Files under $OUT (at most 8, flat, as the device
# tool brings back): summary.md (parts, goals, tables), summary.json, log.txt (every part's output),
# tests.xml, compare_results.json, compare_report.md, and in the dry run imports.txt (every distribution the
# checked code imported, each found on the GPU image or in the carried wheels, else the dry run fails).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

DRY=0
PARTS="tests,env,kernels-wanda,compare,kernels-sparsegpt"
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --parts) PARTS="${2:?--parts needs a comma-separated list}"; shift ;;
    --parts=*) PARTS="${1#--parts=}" ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --budget=*) BUDGET="${1#--budget=}" ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for part in ${PARTS//,/ }; do
  case "$part" in
    tests|env|kernels-wanda|compare|kernels-sparsegpt) ;;
    *) echo "gpu_check: unknown part '$part'; parts: tests, env, kernels-wanda, compare, kernels-sparsegpt" >&2
       exit 2 ;;
  esac
done

OUT="${OUT:-$ROOT/out/gpu_check}"
mkdir -p "$OUT"
OUT_FILES=(summary.md summary.json log.txt tests.xml compare_results.json compare_report.md imports.txt)
for f in "${OUT_FILES[@]}"; do rm -f "$OUT/$f"; done  # only this script's own files: OUT may hold others
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap '[ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"' EXIT   # GPU_CHECK_KEEP_WORK=1 keeps it (debugging)
export PRUNE_GYM_CACHE="$WORK/cache"   # a fresh cache, as on the bare GPU machine (the text is extracted once)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the same pytest, plugins or not, here and there
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
  MODE=dry-run
  SHAPE=qwen3-tiny
  if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
  PY="${PYTHON:-python3}"
  BUDGET="${BUDGET:-1500}"
  export PRUNE_GYM_CUDA_TESTS_DEVICE=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  # Record, for every Python process, which top-level module imported which (import statements, also inside
  # functions): scripts/gpu_check_report.py checks what the project and the carried wheels import.
  mkdir -p "$WORK/audit/modules"
  cat > "$WORK/audit/sitecustomize.py" <<'PYEOF'
import atexit, builtins, os, sys

_import, _pairs = builtins.__import__, set()

def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and globals:
        importer, imported = str(globals.get("__name__") or "").partition(".")[0], name.partition(".")[0]
        if importer != imported:
            _pairs.add((importer, imported))
    return _import(name, globals, locals, fromlist, level)

def _dump() -> None:
    with open(os.path.join(os.environ["GPU_CHECK_AUDIT_DIR"], f"{os.getpid()}.txt"), "w") as f:
        f.write("# " + " ".join(sys.argv) + "\n" + "".join(f"{a} {b}\n" for a, b in sorted(_pairs)))

builtins.__import__ = _recording_import
atexit.register(_dump)
PYEOF
  export GPU_CHECK_AUDIT_DIR="$WORK/audit/modules"
  export PYTHONPATH="$WORK/audit:$PYTHONPATH"
  # tiny sizes: seconds per part on 2 CPU cores
  SEQ=64; ENV_ARGS=(--every 1 --repeats 1 --rollbacks 2 --calib-samples 4 --reward-eval-samples 2 --batch-size 2)
  KERNEL_ARGS=(--calib-samples 8); CMP_ARGS=(--calib-samples 4 --reward-eval-samples 2 --final-eval-samples 2
    --batch-size 2)
  declare -A CAP=([tests]=400 [env]=300 [kernels-wanda]=200 [compare]=500 [kernels-sparsegpt]=200)
  EVO_BUDGET=6000  # validation tokens: 3 generations of 16 children at these sizes
else
  MODE=gpu
  SHAPE=qwen3-4b
  PY="${PYTHON:-python3}"
  BUDGET="${BUDGET:-340}"
  WHEELS="${GPU_WHEELS:-$ROOT/out/gpu_wheels}"
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: $PY sees no CUDA device (or has no torch); without a GPU run: bash scripts/gpu_check.sh --dry-run" >&2
    exit 1
  fi
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels from $WHEELS"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels failed" >&2; exit 1; }
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
  fi
  if ! "$PY" -c "import transformers, gymnasium, gensim, smart_open"; then
    echo "gpu_check: a package is missing: carry out/gpu_wheels to the GPU machine (made here by" \
         "bash scripts/gpu_wheels.sh)" >&2
    exit 1
  fi
  SEQ=2048; ENV_ARGS=(--every 6 --repeats 1 --rollbacks 3 --calib-samples 32 --reward-eval-samples 8 --batch-size 4)
  KERNEL_ARGS=(--calib-samples 128); CMP_ARGS=(--calib-samples 16 --reward-eval-samples 4 --final-eval-samples 4
    --batch-size 4)
  declare -A CAP=([tests]=60 [env]=100 [kernels-wanda]=90 [compare]=120 [kernels-sparsegpt]=300)
  EVO_BUDGET=400000  # validation tokens: 5 generations of 16 children at these sizes
fi

POLICIES="uniform-wanda,owl-wanda"
if "$PY" -c "import sys; from policies.registry import POLICIES; sys.exit(0 if 'evo-search' in POLICIES else 1)" \
    2>/dev/null; then
  POLICIES="$POLICIES,evo-search:budget_tokens=$EVO_BUDGET"
fi

part_command() {
  case "$1" in
    tests) echo "$PY" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py --junitxml="$WORK/tests.xml" ;;
    env) echo "$PY" scripts/bench_env.py --shape "$SHAPE" --seqlen "$SEQ" "${ENV_ARGS[@]}" --no-write \
              --json-out "$WORK/bench_env.json" ;;
    kernels-wanda|kernels-sparsegpt)
      echo "$PY" scripts/bench_kernels.py --shape "$SHAPE" --methods "${1#kernels-}" --targets 0.5 --repeats 1 \
           --seqlen "$SEQ" "${KERNEL_ARGS[@]}" --no-write --json-out "$WORK/${1//-/_}.json" ;;
    compare) echo "$PY" -m policies.app.cli compare --model "random:$SHAPE" --policies "$POLICIES" --tasks none \
                  --target 0.5 --step-size 0.1 --n-levels 4 --max-steps 8 --rollback-threshold 0 \
                  --gradient-every 0 --seqlen "$SEQ" "${CMP_ARGS[@]}" --out "$WORK/compare" --no-progress ;;
  esac
}

START=$(date +%s)
DEADLINE=$((START + BUDGET))
SELECTED=(${PARTS//,/ })
LAST="${SELECTED[${#SELECTED[@]}-1]}"
echo "gpu_check: $MODE on random:$SHAPE, parts ${PARTS}, budget ${BUDGET} s, OUT=$OUT"
printf 'part\tstatus\trc\tseconds\tlimit\tcommand\n' > "$WORK/parts.tsv"
: > "$OUT/log.txt"
for part in "${SELECTED[@]}"; do
  now=$(date +%s)
  left=$((DEADLINE - now))
  limit=${CAP[$part]}
  if [ "$part" = "$LAST" ] || [ "$left" -lt "$limit" ]; then limit=$left; fi
  cmd="$(part_command "$part")"
  if [ "$limit" -lt 10 ]; then
    printf '%s\tskipped\t\t0\t%s\t%s\n' "$part" "$limit" "$cmd" >> "$WORK/parts.tsv"
    echo "gpu_check: $part skipped (${left} s of the budget left)"
    continue
  fi
  echo "gpu_check: $part (limit ${limit} s): $cmd"
  { echo "===== $part (limit ${limit} s)"; echo "\$ $cmd"; } >> "$OUT/log.txt"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # the command is built word by word above, with no spaces inside words
  timeout --kill-after=10 "$limit" $cmd >> "$OUT/log.txt" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=passed ;;
    124|137) status=timed-out ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$status" "$rc" "$secs" "$limit" "$cmd" >> "$WORK/parts.tsv"
  echo "gpu_check: $part $status (rc $rc, ${secs} s)"
  echo "===== $part: $status (rc $rc, ${secs} s)" >> "$OUT/log.txt"
done

[ -f "$WORK/tests.xml" ] && cp "$WORK/tests.xml" "$OUT/tests.xml"
[ -f "$WORK/compare/results.json" ] && cp "$WORK/compare/results.json" "$OUT/compare_results.json"
[ -f "$WORK/compare/report.md" ] && cp "$WORK/compare/report.md" "$OUT/compare_report.md"
"$PY" scripts/gpu_check_report.py --work "$WORK" --out "$OUT" --mode "$MODE" --shape "$SHAPE" \
  --budget "$BUDGET" --seconds "$(( $(date +%s) - START ))"
