#!/usr/bin/env bash
# Device script for attention (issues 4 and 5): install, GPU tests, compute-sanitizer on odd
# shapes, benchmark.  Run from the repository root on the GPU machine:
#
#     bash tools/device_attention.sh [steps...]      steps: test sanitize bench quick sweep
#                                                    (default: test sanitize bench)
#
# Logs and tables go to $OUT (default /tmp/attention_out): gpu.txt, tests.log,
# sanitizer.log, bench.log and bench/attention.{md,json,png}.  Each step runs under its own
# time limit (seconds, env STEP_LIMIT_<STEP>) so that one slow step leaves the others time.
set -u -o pipefail
OUT=${OUT:-/tmp/attention_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
STEPS=${*:-test sanitize bench}
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s]"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu \
    --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 -m pip install --no-deps --no-build-isolation -q -e . > /tmp/pip.log 2>&1 \
    || { echo "pip install failed"; tail -20 /tmp/pip.log; }
python3 -c "import cupy_softmax, cupy; print('cupy', cupy.__version__, 'ok')"

# Compile every kernel once (in parallel processes: CuPy's disk cache then serves the
# tests, the sanitizer runs and the benchmark), timing it.
cat > /tmp/compile_attn.py <<'EOF'
import time, multiprocessing as mp
def build(item):
    import time
    from cupy_softmax import _attention as A
    t = time.time()
    A._get_kernel(item[0], item[1], 0)
    return item[0], time.time() - t
if __name__ == "__main__":
    from cupy_softmax import _attention as A
    from cupy_softmax._attention import TCConfig as T
    items = A.kernel_instances()
    extra = [c for table in A.CANDIDATES.values() for cfgs in table.values() for c in cfgs]
    items += [(A.tc_kernel_name("float16", c, sp), A.tc_kernel_line("float16", c, sp))
              for c in extra for sp in ((True, False) if c.WN == 1 else (True,))]
    t0 = time.time()
    with mp.get_context("spawn").Pool(12) as pool:
        for name, dt in pool.imap_unordered(build, items):
            print(f"{name}: {dt:.1f} s", flush=True)
    print(f"compiled {len(items)} kernels in {time.time() - t0:.1f} s")
EOF
timeout ${STEP_LIMIT_COMPILE:-240} python3 /tmp/compile_attn.py 2>&1 | tee /tmp/compile.log | tail -3

for step in $STEPS; do
  case $step in
  test)
    echo "$(el) tests"
    timeout ${STEP_LIMIT_TEST:-300} python3 -m pytest -q -x -p no:cacheprovider \
        tests/test_attention.py tests/test_decode_attention.py -k "cupy" 2>&1 \
        | tee "$OUT/tests.log" | tail -25
    ;;
  sanitize)
    echo "$(el) compute-sanitizer"
    cat > /tmp/sanitize_attn.py <<'EOF'
import numpy as np, cupy as cp
from cupy_softmax import _attention as A
from cupy_softmax._attention import attention, merge_attention
import ml_dtypes
rng = np.random.default_rng(0)
def mk(shape, dt):
    return cp.asarray(rng.standard_normal(shape).astype(np.float32).astype(dt))
cases = [  # (B, Hq, Hkv, Lq, Lk, d, causal, dtype, kv_lens)
    (1, 2, 2, 37, 53, 64, True, np.float16, None),
    (2, 4, 1, 70, 33, 128, True, ml_dtypes.bfloat16, None),
    (1, 2, 1, 19, 45, 80, False, np.float16, None),
    (1, 2, 2, 17, 41, 256, True, np.float16, None),
    (2, 8, 2, 1, 1031, 128, False, np.float16, [1031, 5]),
    (1, 4, 1, 3, 517, 64, True, ml_dtypes.bfloat16, None),
    (1, 2, 2, 5, 33, 256, False, np.float16, [20]),
    (1, 3, 3, 21, 29, 40, True, np.float32, None),
    (1, 2, 1, 2, 300, 72, False, np.float64, [299]),
]
for B, Hq, Hkv, Lq, Lk, d, causal, dt, lens in cases:
    q, k, v = mk((B, Hq, Lq, d), dt), mk((B, Hkv, Lk, d), dt), mk((B, Hkv, Lk, d), dt)
    out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=lens)
    cp.cuda.Device().synchronize()
    print("ok", B, Hq, Hkv, Lq, Lk, d, causal, np.dtype(dt).name, flush=True)
A.TUNE["splits"] = 3
q, k, v = mk((1, 4, 40, 64), np.float16), mk((1, 2, 300, 64), np.float16), mk((1, 2, 300, 64), np.float16)
attention(q, k, v, causal=True, return_lse=True)
A.TUNE.pop("splits")
o = [mk((3, 5, 24), np.float16) for _ in range(11)]
l = [mk((3, 5), np.float32) for _ in range(11)]
merge_attention(o[:5], l[:5]); merge_attention(o, l)
cp.cuda.Device().synchronize()
print("sanitize script done", flush=True)
EOF
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck; do
      echo "== $tool" | tee -a "$OUT/sanitizer.log"
      timeout ${STEP_LIMIT_SANITIZE:-200} "$CS" --tool $tool --error-exitcode 3 \
          python3 /tmp/sanitize_attn.py >> "$OUT/sanitizer.log" 2>&1
      echo "$tool exit code $?" | tee -a "$OUT/sanitizer.log"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Error|Hazard" "$OUT/sanitizer.log" | sort | uniq -c | head -8
    done
    ;;
  bench|quick)
    echo "$(el) bench ($step)"
    args="--out $OUT/bench"
    [ "$step" = quick ] && args="$args --quick"
    timeout ${STEP_LIMIT_BENCH:-400} python3 bench/bench_attention.py $args >> "$OUT/bench.log" 2>&1
    echo "bench exit code $?"
    ;;
  sweep)
    echo "$(el) sweep"
    timeout ${STEP_LIMIT_SWEEP:-200} python3 bench/bench_attention.py --out /tmp/sweep --sections sweep \
        --reps 10 >> "$OUT/bench.log" 2>&1
    echo "sweep exit code $?"
    cp /tmp/sweep/attention.md "$OUT/sweep.md" 2>/dev/null
    ;;
  *) echo "unknown step $step" ;;
  esac
done
echo "$(el) done"
grep -v "^|" "$OUT/bench.log" 2>/dev/null | grep -iE "fail|error|Traceback" | sort | uniq -c | head -10
cat "$OUT/bench/attention.md" "$OUT/sweep.md" 2>/dev/null
