"""Time and peak memory of cupy_softmax's NumPy path against scipy.special.

    python bench/bench_cpu.py            # (4096, 32000) float32 and float64, ~2-3 min on 2 cores
    python bench/bench_cpu.py --quick    # (1024, 8000), seconds
    python bench/bench_cpu.py --write    # also write the table to bench/results/cpu.md

For each function (softmax, log_softmax, logsumexp), dtype and axis (-1, 0):
the median wall time (time.perf_counter) of --repeats calls after one
warm-up call, on random normal data * 10; and the peak memory allocated during
one call beyond what was allocated before it, the result included, measured
with tracemalloc (NumPy reports its array buffers to it).  The memory is
measured in the warm-up call, so tracemalloc's overhead does not touch the
timings.
"""

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
import tracemalloc
import warnings

import numpy as np
import scipy
import scipy.special

try:
    import cupy_softmax
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import cupy_softmax

FUNCTIONS = ("softmax", "log_softmax", "logsumexp")
MiB = 2.0 ** 20


def _call(impl, fn, x, axis):
    if impl == "scipy":
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return getattr(scipy.special, fn)(x, axis=axis)
    return getattr(cupy_softmax, fn)(x, axis=axis)


def peak_extra_mib(impl, fn, x, axis):
    """Peak bytes allocated inside one call, above those allocated before it (MiB)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = _call(impl, fn, x, axis)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return (peak - before) / MiB


def median_ms(impl, fn, x, axis, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = _call(impl, fn, x, axis)
        times.append(time.perf_counter() - t0)
        del result
    return statistics.median(times) * 1e3


def run(shape, repeats, dtypes, axes):
    rng = np.random.default_rng(0)
    rows = []
    for dtype in dtypes:
        x = rng.standard_normal(shape, dtype=np.float32 if dtype == np.float32 else np.float64)
        x *= 10
        for axis in axes:
            for fn in FUNCTIONS:
                row = {"function": fn, "dtype": np.dtype(dtype).name, "axis": axis}
                for impl in ("ours", "scipy"):
                    row[f"{impl}_mib"] = peak_extra_mib(impl, fn, x, axis)  # also the warm-up
                    row[f"{impl}_ms"] = median_ms(impl, fn, x, axis, repeats)
                rows.append(row)
                print(f"  {fn:<11} {row['dtype']:<7} axis={axis:<2}  ours {row['ours_ms']:8.1f} ms "
                      f"{row['ours_mib']:7.0f} MiB   scipy {row['scipy_ms']:8.1f} ms "
                      f"{row['scipy_mib']:7.0f} MiB", file=sys.stderr, flush=True)
        del x
    return rows


def table(rows, shape, repeats):
    cpu = platform.processor() or platform.machine()
    lines = [
        f"Shape {shape[0]} x {shape[1]}, random normal * 10; median of {repeats} calls after a "
        f"warm-up; peak = memory allocated during one call beyond that before it, result "
        f"included (tracemalloc). input: {shape[0] * shape[1] * 4 / MiB:.0f} MiB (float32), "
        f"{shape[0] * shape[1] * 8 / MiB:.0f} MiB (float64).",
        "",
        f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"cupy_softmax {cupy_softmax.__version__}; {os.cpu_count()} CPU cores ({cpu}).",
        "",
        "| function | dtype | axis | ours ms | scipy ms | speedup | ours peak MiB | scipy peak MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['function']} | {r['dtype']} | {r['axis']} | {r['ours_ms']:.1f} | "
            f"{r['scipy_ms']:.1f} | {r['scipy_ms'] / r['ours_ms']:.2f}x | {r['ours_mib']:.0f} | "
            f"{r['scipy_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shape (1024, 8000) instead of (4096, 32000)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per case (default 3, or 5 with --quick)")
    parser.add_argument("--dtype", choices=["float32", "float64"], action="append",
                        help="only this dtype (repeatable)")
    parser.add_argument("--write", action="store_true", help="write the table to bench/results/cpu.md")
    args = parser.parse_args(argv)
    shape = (1024, 8000) if args.quick else (4096, 32000)
    repeats = args.repeats or (5 if args.quick else 3)
    dtypes = [np.dtype(d).type for d in (args.dtype or ["float32", "float64"])]
    t0 = time.perf_counter()
    rows = run(shape, repeats, dtypes, axes=(-1, 0))
    text = table(rows, shape, repeats)
    print(text)
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if args.write:
        out = pathlib.Path(__file__).resolve().parent / "results" / "cpu.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# CPU: cupy_softmax's NumPy path vs scipy.special\n\n" + text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
