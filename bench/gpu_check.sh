#!/usr/bin/env bash
# The one-shot GPU check: build, Triton diagnostic, GPU tests, memcheck, GPU benchmarks,
# in about nine minutes (run it with the device tool's timeout_s at 600).
#
#   bash bench/gpu_check.sh OUTDIR
#
# For the lent GPU machine (no package registry; torch 2.11, Triton 3.6, Python 3.12,
# nvcc 13.0). Run from anywhere; it works in the checkout that holds this script.
# Every stage runs under `timeout`, within a total deadline (GPU_CHECK_TOTAL_S, default
# 540 s), and the next stage runs even when one fails. OUTDIR receives:
#   env.txt         nvidia-smi, versions, metakern backends after the build
#   build.txt       pip install -e . output
#   tests_v.txt     python -m pytest tests -v (with pytest-xdist, TEST_WORKERS=12, when importable)
#   sanitize.txt    compute-sanitizer memcheck of bench/sanitize_gpu.py (cuda, triton)
#   bench.txt       the benchmark table;  bench_gpu.csv, bench_gpu.png
#   status.txt      one line per stage: name, exit code (124 = timed out), seconds, limit;
#                   the tests' failures, skips and count
# Tests: by default the tests that touch a GPU backend (TEST_K="cuda or triton or build");
# the whole suite takes far longer on a GPU than on the CPU, since Triton compiles
# every kernel variant (388 of ~2600 tests ran in 150 s with 12 workers on an H200).
# Narrower or wider runs: TEST_ARGS (pytest paths, default tests), TEST_K (pytest -k; "" for all),
# SANITIZE_BACKENDS (default cuda,triton), BENCH_ARGS (extra benchmark flags),
# DIAG=0 (skip bench/triton_diag.py, whose table goes to status.txt).
# Stage limits (seconds, each also capped by the time left): BUILD_S (150), DIAG_S (90),
# TESTS_S (240), SANITIZE_S (60), and the benchmark gets what remains but PLOT_RESERVE_S (20).
set -u

OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PY:-$(command -v python3 || command -v python)}   # the GPU image has python3 (with torch)
export PY
export METAKERN_CUDA_ARCHS=${METAKERN_CUDA_ARCHS:-9.0}   # the build and test_build read it

TOTAL=${GPU_CHECK_TOTAL_S:-540}
BUILD_S=${BUILD_S:-150}
TESTS_S=${TESTS_S:-240}
SANITIZE_S=${SANITIZE_S:-60}
PLOT_RESERVE_S=${PLOT_RESERVE_S:-20}
BENCH_MIN_S=${BENCH_MIN_S:-90}    # kept back for the benchmark by the stages before it
START=$SECONDS
: > "$OUT/status.txt"

# limit DEFAULT RESERVE: DEFAULT, capped so RESERVE seconds stay for later stages (at least 5)
limit() {
  local left=$(( TOTAL - (SECONDS - START) - $2 ))
  (( left < $1 )) && echo $(( left > 5 ? left : 5 )) || echo "$1"
}

# stage NAME LIMIT LOG CMD...: run CMD under timeout, output appended to LOG and shown
stage() {
  local name=$1 lim=$2 log=$3; shift 3
  local t0=$SECONDS
  echo "=== $name (limit ${lim}s): $*" | tee -a "$log"
  timeout -k 10 "$lim" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc seconds=$(( SECONDS - t0 )) limit=$lim" | tee -a "$OUT/status.txt"
  return 0
}

# 1. environment
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi || echo "nvidia-smi failed"
  nvcc --version || echo "no nvcc"
  git rev-parse --short HEAD 2>/dev/null || echo "git revision unknown"
} > "$OUT/env.txt" 2>&1
stage env 30 "$OUT/env.txt" "$PY" -c "
import sys, torch
print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')
try:
    import triton; print('triton', triton.__version__)
except Exception as e:
    print('triton: not importable:', e)
"

# 2. build (CPU and CUDA kernels, sm_90 only). --use-pep517: without it an older pip
# runs `setup.py develop`, which calls pip again with build isolation (no registry there).
# If pip fails, build the extension in place (PYTHONPATH above finds the package).
build() {
  env MAX_JOBS=16 "$PY" -m pip install --no-index --no-build-isolation --no-deps --use-pep517 -e . && return 0
  echo "pip install failed: building in place"
  env MAX_JOBS=16 "$PY" setup.py build_ext --inplace
}
export -f build
stage build "$(limit "$BUILD_S" $(( 15 + BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/build.txt" bash -c build
stage backends 30 "$OUT/env.txt" "$PY" -c "
import metakern as mk
for name, why in mk.backends.available().items():
    print(f'backend {name}:', 'available' if not why else 'unavailable: ' + '; '.join(why))
"

# 2b. Triton launchers against the torch backend, per variant (bench/triton_diag.py)
if [[ "${DIAG:-1}" == 1 ]]; then
  stage triton-diag "$(limit "${DIAG_S:-90}" $(( BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/status.txt" \
    "$PY" bench/triton_diag.py
fi

# 3. tests (by default those of the GPU backends). One line per test goes to
# tests_v.txt as it finishes (so a timeout keeps what ran); failures are printed after.
XDIST=()
KSEL=(-k "${TEST_K-cuda or triton or build}")   # TEST_K unset: the GPU tests; TEST_K="": all
[[ -z "${TEST_K-x}" ]] && KSEL=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-12}")
stage tests "$(limit "$TESTS_S" $(( SANITIZE_S + BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/status.txt" \
  sh -c 'exec "$@" > "$0" 2>&1' "$OUT/tests_v.txt" "$PY" -m pytest ${TEST_ARGS:-tests} "${KSEL[@]}" -v -rfE -p no:cacheprovider \
  "${XDIST[@]}"
{
  echo "--- tests: failures and errors (tests_v.txt has every test)"
  grep -E "^(FAILED|ERROR) |(FAILED|ERROR) tests/" "$OUT/tests_v.txt" | sort -u | head -60
  echo "--- tests: skips"
  grep -E "SKIPPED" "$OUT/tests_v.txt" | sort -u | head -30
  echo "--- tests: summary"
  grep -cE " PASSED " "$OUT/tests_v.txt" | sed 's/^/passed lines: /'
  tail -n 1 "$OUT/tests_v.txt"; echo
} | tee -a "$OUT/status.txt"

# 3b. compute-sanitizer memcheck over the GPU kernels (small odd shapes, checked values)
if command -v compute-sanitizer >/dev/null; then
  stage memcheck "$(limit "$SANITIZE_S" $(( BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/sanitize.txt" \
    compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 "$PY" bench/sanitize_gpu.py "${SANITIZE_BACKENDS:-cuda,triton}"
else
  echo "memcheck skipped: no compute-sanitizer" | tee -a "$OUT/status.txt"
fi

# 4. benchmarks: rows stream into the CSV, so a timeout keeps what was measured
BENCH_LIM=$(limit 100000 "$PLOT_RESERVE_S")
BUDGET=$(( BENCH_LIM > 120 ? BENCH_LIM - 60 : BENCH_LIM / 2 ))   # start no config after this
stage bench "$BENCH_LIM" "$OUT/bench.txt" \
  "$PY" -m metakern.benchmark --profile gpu --device cuda --time-budget "$BUDGET" ${BENCH_ARGS:-} \
  --csv "$OUT/bench_gpu.csv" --plot "$OUT/bench_gpu.png"

# 5. plot from the CSV if the benchmark did not get that far
if [[ ! -s "$OUT/bench_gpu.png" && -s "$OUT/bench_gpu.csv" ]]; then
  stage plot "$(limit "$PLOT_RESERVE_S" 0)" "$OUT/bench.txt" \
    "$PY" bench/plot.py "$OUT/bench_gpu.csv" -o "$OUT/bench_gpu.png"
fi

echo "total seconds=$(( SECONDS - START ))" >> "$OUT/status.txt"
echo "=== summary ($OUT/status.txt)"
cat "$OUT/status.txt"
