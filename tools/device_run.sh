#!/usr/bin/env bash
# The one script run on the device machine (GPU): install, compile every kernel, run the
# whole test suite, compute-sanitizer over the softmax and attention drivers, and the
# benchmarks (softmax family, attention, Dask).  Logs, tables and plots go to $OUT
# (default /tmp/cupy_softmax_out); a short summary is printed last.
#
#   tools/device_run.sh                      # tests sanitize bench
#   tools/device_run.sh tests                # any subset of: tests check sanitize bench sweep quick
#                                            #   profile attention
#   (check: tools/sanitize_run.py's results alone, without compute-sanitizer; profile:
#   Nsight Compute over bench/profile_kernels.py, cases from PROFILE_CASES; attention:
#   bench_attention.py alone, with ATTN_ARGS)
#   tools/device_run.sh bench sweep          # benchmark plus the size-table sweep
#   tools/device_run.sh bench quick          # a quick subset of the benchmarks
# Wheels in .whl/ (dask, distributed, dask-cuda: not in the device image) are installed
# first when present.  PYTEST_ARGS (default "-x", split on spaces) and PYTEST_K (one -k
# expression) are added to the pytest command, BENCH_ARGS to bench_gpu.py's, ATTN_ARGS
# to bench_attention.py's; T_TESTS, T_CHECK, T_MEMCHECK, T_RACECHECK, T_BENCH, T_PROFILE
# cap each step's seconds (a hang must not eat the machine time).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/cupy_softmax_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

parts=" $* "
[ -z "${*}" ] && parts=" tests sanitize bench "
want() { [[ "$parts" == *" $1 "* ]]; }
status=0
step() { printf '\n=== %s (%ds)\n' "$*" "$SECONDS"; }

step "install"
if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl > /tmp/pip_whl.log 2>&1 && export PYTHONPATH=/tmp/site \
        || { echo "wheel install failed:"; tail -5 /tmp/pip_whl.log; }
fi
$PY -m pip install --no-deps --no-build-isolation -q -e . > /tmp/pip.log 2>&1 \
    || { echo "pip install -e . failed:"; tail -20 /tmp/pip.log; status=1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
    --format=csv 2>&1 | head -3
$PY - <<'PY'
import cupy
p = cupy.cuda.runtime.getDeviceProperties(0)
print("GPU:", p["name"].decode() if isinstance(p["name"], bytes) else p["name"],
      f"{p['multiProcessorCount']} SMs, L2 {p['l2CacheSize'] / 2**20:.0f} MiB; cupy", cupy.__version__)
PY
step "compile every kernel (NVRTC, parallel; CuPy's disk cache serves the rest)"
timeout -k 10 300 $PY tools/compile_all.py 2>&1 | tail -6

if want tests; then
    step "pytest (HYPOTHESIS_PROFILE=ci)"
    # shellcheck disable=SC2086
    kargs=(); [ -n "${PYTEST_K:-}" ] && kargs=(-k "$PYTEST_K")
    HYPOTHESIS_PROFILE=ci timeout -k 10 "${T_TESTS:-300}" $PY -m pytest tests -q ${PYTEST_ARGS:--x} \
        "${kargs[@]}" -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -40
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want check; then
    step "sanitize_run (results only)"
    timeout -k 10 "${T_CHECK:-180}" $PY tools/sanitize_run.py 2>&1 | tee "$OUT/check.log" | tail -25
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if want sanitize; then
    step "compute-sanitizer memcheck"
    timeout -k 10 "${T_MEMCHECK:-180}" compute-sanitizer --tool memcheck --error-exitcode 99 \
        $PY tools/sanitize_run.py > "$OUT/sanitize.log" 2>&1
    rc=$?; echo "memcheck exit $rc"; tail -5 "$OUT/sanitize.log"; [ $rc -eq 0 ] || status=1
    step "compute-sanitizer racecheck"
    timeout -k 10 "${T_RACECHECK:-120}" compute-sanitizer --tool racecheck --error-exitcode 99 \
        $PY tools/sanitize_run.py --small >> "$OUT/sanitize.log" 2>&1
    rc=$?; echo "racecheck exit $rc"; tail -5 "$OUT/sanitize.log"; [ $rc -eq 0 ] || status=1
    for tool in memcheck racecheck; do
        step "compute-sanitizer $tool (attention)"
        timeout -k 10 "${T_MEMCHECK:-180}" compute-sanitizer --tool $tool --error-exitcode 99 \
            $PY tools/sanitize_attention.py >> "$OUT/sanitize_attention.log" 2>&1
        rc=$?; echo "$tool exit $rc"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize_attention.log" | tail -2
        [ $rc -eq 0 ] || status=1
    done
fi

if want profile; then
    step "Nsight Compute"
    # shellcheck disable=SC2086
    timeout -k 10 "${T_PROFILE:-240}" ncu --profile-from-start off --clock-control none \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        $PY bench/profile_kernels.py ${PROFILE_CASES:-} > "$OUT/ncu.txt" 2>&1
    echo "ncu exit $?"
    grep -E "^=== case|^  [A-Za-z_].*\(|Duration|DRAM Throughput|Registers Per|Achieved Occupancy" \
        "$OUT/ncu.txt" | head -150
fi

if want attention; then
    step "attention benchmark"
    # shellcheck disable=SC2086
    timeout -k 10 "${T_BENCH:-300}" $PY bench/bench_attention.py --out "$OUT" ${ATTN_ARGS:-} \
        > "$OUT/bench_attention.log" 2>&1 || status=1
    grep -E "^\|" "$OUT/bench_attention.log" | head -80
fi

if want bench; then
    step "benchmark"
    args=(--out "$OUT")
    want quick && args+=(--quick)
    want sweep && args+=(--sweep)
    # shellcheck disable=SC2206
    args+=(${BENCH_ARGS:-})
    timeout -k 10 "${T_BENCH:-300}" $PY bench/bench_gpu.py "${args[@]}" > "$OUT/bench_gpu.log" 2>&1
    [ $? -eq 0 ] || { status=1; tail -20 "$OUT/bench_gpu.log"; }
    step "attention benchmark"
    aargs=(--out "$OUT"); want quick && aargs+=(--quick)
    timeout -k 10 "${T_BENCH:-300}" $PY bench/bench_attention.py "${aargs[@]}" > "$OUT/bench_attention.log" 2>&1
    [ $? -eq 0 ] || { status=1; tail -20 "$OUT/bench_attention.log"; }
    step "Dask benchmark (CuPy chunks)"
    timeout -k 10 120 $PY bench/bench_dask.py --gpu --write "$OUT/bench_dask.md" 2>&1 | tail -12
    step "summary"
    cat "$OUT/bench_gpu.md" "$OUT/attention.md" 2>/dev/null | grep -E "^(GPU|Device|Copy|copy|\\| )" | head -120
elif want sweep; then
    step "size-table sweep"
    $PY - "$OUT" <<'PY'
import sys
out = sys.argv[1]
sys.argv = ["bench_gpu", "--out", out]
sys.path.insert(0, "bench")
import bench_gpu as b, cupy
p = cupy.cuda.runtime.getDeviceProperties(0)
copy = b.copy_bandwidth()
print(f"copy {copy:.0f} GB/s")
s = b.sweep(20, p["l2CacheSize"], copy)
print(s)
open(out + "/sweep.md", "w").write(s + "\n")
PY
fi

step "done: status $status"
exit $status
