#!/usr/bin/env bash
# The one-shot GPU check: build, GPU tests, GPU benchmarks, in about six minutes.
#
#   bash bench/gpu_check.sh OUTDIR
#
# For the lent GPU machine (no package registry; torch 2.11, Triton 3.6, Python 3.12,
# nvcc 13.0). Run from anywhere; it works in the checkout that holds this script.
# Every stage runs under `timeout`, within a total deadline (GPU_CHECK_TOTAL_S, default
# 345 s), and the next stage runs even when one fails. OUTDIR receives:
#   env.txt         nvidia-smi, versions, metakern backends after the build
#   build.txt       pip install -e . output
#   tests.txt       python -m pytest tests -q
#   bench.txt       the benchmark table;  bench_gpu.csv, bench_gpu.png
#   status.txt      one line per stage: name, exit code (124 = timed out), seconds, limit
# Stage limits (seconds, each also capped by the time left): BUILD_S (150),
# TESTS_S (90), and the benchmark gets what remains but PLOT_RESERVE_S (20).
set -u

OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

TOTAL=${GPU_CHECK_TOTAL_S:-345}
BUILD_S=${BUILD_S:-150}
TESTS_S=${TESTS_S:-90}
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
stage env 30 "$OUT/env.txt" python -c "
import sys, torch
print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')
try:
    import triton; print('triton', triton.__version__)
except Exception as e:
    print('triton: not importable:', e)
"

# 2. build (CPU and CUDA kernels, sm_90 only)
stage build "$(limit "$BUILD_S" $(( 15 + BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/build.txt" \
  env METAKERN_CUDA_ARCHS=9.0 MAX_JOBS=16 pip install --no-index --no-build-isolation --no-deps -e .
stage backends 30 "$OUT/env.txt" python -c "
import metakern as mk
for name, why in mk.backends.available().items():
    print(f'backend {name}:', 'available' if not why else 'unavailable: ' + '; '.join(why))
"

# 3. tests (the whole suite; the GPU ones run here, the rest are quick)
stage tests "$(limit "$TESTS_S" $(( BENCH_MIN_S + PLOT_RESERVE_S )))" "$OUT/tests.txt" \
  python -m pytest tests -q

# 4. benchmarks: rows stream into the CSV, so a timeout keeps what was measured
BENCH_LIM=$(limit 100000 "$PLOT_RESERVE_S")
BUDGET=$(( BENCH_LIM > 120 ? BENCH_LIM - 60 : BENCH_LIM / 2 ))   # start no config after this
stage bench "$BENCH_LIM" "$OUT/bench.txt" \
  python -m metakern.benchmark --profile gpu --device cuda --time-budget "$BUDGET" \
  --csv "$OUT/bench_gpu.csv" --plot "$OUT/bench_gpu.png"

# 5. plot from the CSV if the benchmark did not get that far
if [[ ! -s "$OUT/bench_gpu.png" && -s "$OUT/bench_gpu.csv" ]]; then
  stage plot "$(limit "$PLOT_RESERVE_S" 0)" "$OUT/bench.txt" \
    python bench/plot.py "$OUT/bench_gpu.csv" -o "$OUT/bench_gpu.png"
fi

echo "total seconds=$(( SECONDS - START ))" >> "$OUT/status.txt"
echo "=== summary ($OUT/status.txt)"
cat "$OUT/status.txt"
