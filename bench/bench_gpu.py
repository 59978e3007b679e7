#!/usr/bin/env python3
"""GPU benchmark of cupy_softmax against torch and cupyx.scipy.special (issue 3).

    python bench/bench_gpu.py --out DIR [--quick] [--sweep] [--reps N]

Method: random inputs (standard normal * 4); several input buffers, rotated so that
the data of consecutive repetitions exceeds the L2 cache several times over; every
repetition is queued behind a short GPU spin so that host-side launch overhead
(Python, dispatch) is hidden for every library alike, and is timed with CUDA events
around the call alone; the median of the repetitions is reported.  The copy
bandwidth (device-to-device copy of 2 GiB, bytes read + bytes written) is measured
in the same run.  Model bandwidth = bytes that must move (input once, output once;
for logsumexp one value per row) / time.

Writes DIR/bench_gpu.md (the table), DIR/bench_gpu.png (bandwidth against row
length) and DIR/bench_gpu.json; without --quick also DIR/ceilings.md (bench/ceilings.py:
what a plain read and a memcpy of the same bytes reach in the same run).  --sweep also times the kernel variants of the size
table on the key shapes (DIR/sweep.md).  scipy.special with SCIPY_ARRAY_API=1 on
CuPy arrays is tried and reported where it runs.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("SCIPY_ARRAY_API", "1")   # before scipy is imported anywhere

import numpy as np
import cupy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cupy_softmax  # noqa: E402
from cupy_softmax import _cupy_backend  # noqa: E402

try:
    import torch
    if not torch.cuda.is_available():
        torch = None
except Exception:   # noqa: BLE001
    torch = None

try:
    import cupyx.scipy.special as cpx_special
except Exception:   # noqa: BLE001
    cpx_special = None

try:
    import scipy.special as sp_special
except Exception:   # noqa: BLE001
    sp_special = None

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except Exception:   # noqa: BLE001
    BF16 = None

ROW_SHAPES = [(65536, 128), (32768, 1024), (4096, 4096), (8192, 32000),
              (128, 131072), (16, 262144), (1, 262144), (4, 1048576)]
AXIS0_SHAPES = [(32768, 1024), (8192, 32000)]
QUICK_ROW_SHAPES = [(32768, 1024), (8192, 32000), (128, 131072), (1, 262144)]
OPS = ["softmax", "log_softmax", "logsumexp"]

_SPIN_SRC = r"""
extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""
_spin_kernel = None
_clock_khz = None


def spin(us):
    """Keep the GPU busy for about `us` microseconds (hides host enqueue overhead)."""
    global _spin_kernel, _clock_khz
    if _spin_kernel is None:
        _spin_kernel = cupy.RawKernel(_SPIN_SRC, "spin")
        _clock_khz = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"]
    _spin_kernel((1,), (1,), (int(us * _clock_khz / 1000),))


def time_op(fn, args_list, reps, warmup=3, spin_us=150):
    """Median CUDA-event time (us) of fn(*args), rotating over args_list.

    Each call is queued behind a spin kernel, so that the host's time to issue it is
    not timed.  Where the spin had already ended when the call was queued (the GPU
    waited for the host between the start event and the call's kernels), that call is
    timed again behind a spin four times as long (up to 64 times)."""
    stream = cupy.cuda.get_current_stream()
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    stream.synchronize()
    events = []
    for i in range(reps):
        args = args_list[i % len(args_list)]
        s = spin_us
        while True:
            spin(s)
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record(stream)
            fn(*args)
            b.record(stream)
            if not a.done or s >= 64 * spin_us:
                break
            s *= 4
        events.append((a, b))
    stream.synchronize()
    return statistics.median(cupy.cuda.get_elapsed_time(a, b) * 1e3 for a, b in events)


def host_time(fn, args, reps=200):
    """Wall time (us) per call when calls are queued back to back (host-bound for small work)."""
    fn(*args)
    cupy.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    cupy.cuda.get_current_stream().synchronize()
    return (time.perf_counter() - t0) / reps * 1e6


def copy_bandwidth(nbytes=2 << 30, reps=20):
    src = cupy.empty(nbytes // 4, cupy.float32)
    src[...] = 1.0
    dst = cupy.empty_like(src)
    dptr, sptr = dst.data.ptr, src.data.ptr
    us = time_op(lambda: cupy.cuda.runtime.memcpyAsync(dptr, sptr, nbytes, 3,
                                                       cupy.cuda.get_current_stream().ptr),
                 [()], reps, spin_us=20)
    del src, dst
    cupy.get_default_memory_pool().free_all_blocks()
    return 2 * nbytes / (us * 1e-6) / 1e9


def make_inputs(shape, dtype, l2_bytes):
    """Several random buffers of `shape`: together >= 3x L2 (at least 2)."""
    nbytes = math.prod(shape) * (2 if dtype in ("float16", "bfloat16") else 4)
    nbuf = int(min(256, max(2, math.ceil(3 * l2_bytes / nbytes))))
    bufs = []
    for i in range(nbuf):
        x = cupy.random.standard_normal(shape, dtype=cupy.float32) * 4
        if dtype == "float16":
            x = x.astype(cupy.float16)
        elif dtype == "bfloat16":
            x = x.astype(BF16)
        bufs.append(x)
    return bufs


def as_torch(x):
    if x.dtype == BF16:
        return torch.as_tensor(x.view(cupy.int16), device="cuda").view(torch.bfloat16)
    return torch.as_tensor(x, device="cuda")


def libraries(op, axis):
    """name -> callable(x) for each library that has `op`."""
    libs = {"ours": lambda x: getattr(cupy_softmax, op)(x, axis=axis)}
    if torch is not None:
        if op == "softmax":
            libs["torch"] = lambda t: torch.softmax(t, dim=axis)
        elif op == "log_softmax":
            libs["torch"] = lambda t: torch.log_softmax(t, dim=axis)
        else:
            libs["torch"] = lambda t: torch.logsumexp(t, dim=axis)
    if cpx_special is not None and hasattr(cpx_special, op):
        libs["cupyx"] = lambda x: getattr(cpx_special, op)(x, axis=axis)
    if sp_special is not None and hasattr(sp_special, op):
        libs["scipy"] = lambda x: getattr(sp_special, op)(x, axis=axis)
    return libs


def bench_case(op, shape, dtype, axis, reps, l2_bytes, copy_gbps, skip=()):
    bufs = make_inputs(shape, dtype, l2_bytes)
    isz = bufs[0].itemsize
    n_in = math.prod(shape) * isz
    n_out = n_in if op != "logsumexp" else n_in // shape[axis]
    row = {"op": op, "shape": list(shape), "dtype": dtype, "axis": axis,
           "model_bytes": n_in + n_out}
    for name, fn in libraries(op, axis).items():
        if name in skip:
            continue
        args = [(as_torch(b),) for b in bufs] if name == "torch" else [(b,) for b in bufs]
        r = reps if name in ("ours", "torch") else max(5, reps // 4)
        try:
            us = time_op(fn, args, r)
        except Exception as exc:   # noqa: BLE001
            row[name] = None
            row[name + "_error"] = f"{type(exc).__name__}: {str(exc)[:80]}"
            continue
        row[name] = us
        del args
    if row.get("ours"):
        row["ours_gbps"] = row["model_bytes"] / (row["ours"] * 1e-6) / 1e9
        row["ours_pct_copy"] = 100 * row["ours_gbps"] / copy_gbps
    del bufs
    cupy.get_default_memory_pool().free_all_blocks()
    return row


def fmt_us(v):
    return "n/a" if v is None else (f"{v:.1f}" if v < 1000 else f"{v:.0f}")


def fmt_x(ref, ours):
    return "n/a" if not ref or not ours else f"{ref / ours:.2f}x"


def table(rows, gpu, copy_gbps, host_us):
    lines = [f"GPU: {gpu}; device-to-device copy: {copy_gbps:.0f} GB/s (read + write, 2 GiB); "
             f"our host overhead per call (softmax 1024x1024 f32, back to back): {host_us:.1f} us", "",
             "Times: median CUDA-event time in microseconds, host overhead hidden behind a GPU spin, "
             "inputs rotated over >= 3x L2.", "",
             "| op | dtype | shape | axis | ours us | GB/s | % copy | torch us | vs torch | "
             "cupyx us | vs cupyx | scipy(array API) us |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gb = r.get("ours_gbps")
        gb_s = "n/a" if gb is None else f"{gb:.0f}"
        pct_s = "n/a" if gb is None else f"{r['ours_pct_copy']:.0f}%"
        lines.append(
            f"| {r['op']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} | {r['axis']} | "
            f"{fmt_us(r.get('ours'))} | {gb_s} | {pct_s} | "
            f"{fmt_us(r.get('torch'))} | {fmt_x(r.get('torch'), r.get('ours'))} | "
            f"{fmt_us(r.get('cupyx'))} | {fmt_x(r.get('cupyx'), r.get('ours'))} | "
            f"{fmt_us(r.get('scipy')) if r.get('scipy') else ('n/a' if 'scipy_error' in r else '-')} |")
    errs = sorted({(k, r[k]) for r in rows for k in r if k.endswith("_error")})
    if errs:
        lines += ["", "Not timed: " + "; ".join(f"{k[:-6]}: {v}" for k, v in errs[:6])]
    return "\n".join(lines)


def plot(rows, copy_gbps, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:   # noqa: BLE001
        print(f"no plot: {exc}")
        return
    panels = sorted({(r["op"], r["dtype"]) for r in rows if r["axis"] == -1})
    cols = 3
    nrow = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(5 * cols, 3.6 * nrow), squeeze=False)
    for ax, (op, dtype) in zip(axes.flat, panels):
        # one point per row length: the shape that moves the most bytes (1x262144, a
        # latency case, would otherwise sit below 16x262144 at the same n)
        best = {}
        for r in rows:
            if r["op"] == op and r["dtype"] == dtype and r["axis"] == -1:
                n = r["shape"][1]
                if n not in best or r["model_bytes"] > best[n]["model_bytes"]:
                    best[n] = r
        sel = [best[n] for n in sorted(best)]
        for lib, style in (("ours", "o-"), ("torch", "s--"), ("cupyx", "^:"), ("scipy", "x:")):
            pts = [(r["shape"][1], r["model_bytes"] / (r[lib] * 1e-6) / 1e9)
                   for r in sel if r.get(lib)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=lib)
        ax.axhline(copy_gbps, color="gray", lw=1, label="copy")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{op} {dtype}, axis=-1")
        ax.set_xlabel("row length n (largest rows x n shape per n)")
        ax.set_ylabel("GB/s (input + output)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# three-pass columns (axis=0 of long columns): row bytes a col_normalize block covers
NORMALIZE_VARIANTS = [{}, {"norm_row_bytes": 512}, {"norm_row_bytes": 128}]


def sweep(reps, l2_bytes, copy_gbps):
    """Time variants of the size table on the key shapes (ours only)."""
    T = _cupy_backend.TUNE
    cases = [
        ("softmax", (65536, 128), "float32", -1, [{}, {"row_block": (128, 16, 0, "r")}]),
        ("log_softmax", (65536, 128), "float32", -1, [{}, {"row_block": (128, 16, 0, "r")}]),
        ("softmax", (8192, 32000), "float32", -1, [{}, {"row_entry": (256, 16, 1)}]),
        ("softmax", (8192, 32000), "float16", -1, [{}, {"row_entry": (256, 32, 1)}]),
        ("softmax", (128, 131072), "float32", -1,
         [{}, {"three_pass": True}, {"row_entry": (256, 16, 1)}]),
        *[("softmax", shape, dtype, 0, NORMALIZE_VARIANTS)
          for shape in AXIS0_SHAPES for dtype in ("float32", "float16")],
        ("logsumexp", (32768, 1024), "float32", 0, [{}, {"col_row_bytes": 512}]),
        ("logsumexp", (8192, 32000), "float32", 0, [{}, {"col_row_bytes": 128}]),
    ]
    lines = ["| op | dtype | shape | variant | us | GB/s | % copy |", "|---|---|---|---|---:|---:|---:|"]
    for op, shape, dtype, axis, variants in cases:
        bufs = make_inputs(shape, dtype, l2_bytes)
        n_in = bufs[0].nbytes
        model = n_in + (n_in if op != "logsumexp" else n_in // shape[axis])
        for v in variants:
            T.clear()
            T.update(v)
            try:
                us = time_op(lambda x: getattr(cupy_softmax, op)(x, axis=axis), [(b,) for b in bufs], reps)
                gb = model / (us * 1e-6) / 1e9
                lines.append(f"| {op} ax{axis} | {dtype} | {shape[0]}x{shape[1]} | {v or 'default'} | {us:.1f} | "
                             f"{gb:.0f} | {100 * gb / copy_gbps:.0f}% |")
            except Exception as exc:   # noqa: BLE001
                lines.append(f"| {op} | {dtype} | {shape[0]}x{shape[1]} | {v} | error: "
                             f"{type(exc).__name__} {str(exc)[:60]} | | |")
        T.clear()
        del bufs
        cupy.get_default_memory_pool().free_all_blocks()
    T.clear()
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true", help="a subset of shapes, fewer repetitions")
    ap.add_argument("--sweep", action="store_true", help="also time the variants of the size table")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--dtypes", nargs="+", default=None)
    ap.add_argument("--no-others", action="store_true", help="time ours only (and torch)")
    ap.add_argument("--no-scipy", action="store_true", help="skip scipy.special on CuPy arrays")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot of a saved run (no GPU)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        plot(saved["rows"], saved["copy_gbps"], os.path.join(args.out, "bench_gpu.png"))
        return
    reps = args.reps or (15 if args.quick else 50)
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    l2 = props["l2CacheSize"]
    gpu_desc = f"{gpu} ({props['multiProcessorCount']} SMs, L2 {l2 / 2**20:.0f} MiB)"
    print(f"# bench_gpu on {gpu_desc}; torch {getattr(torch, '__version__', 'absent')}, "
          f"cupy {cupy.__version__}", flush=True)

    t = time.perf_counter()
    cupy_softmax._kernels.compile_all() if hasattr(cupy_softmax, "_kernels") else None
    print(f"kernel modules ready in {time.perf_counter() - t:.1f} s", flush=True)
    copy_gbps = copy_bandwidth()
    print(f"copy bandwidth: {copy_gbps:.0f} GB/s", flush=True)
    xh = cupy.random.standard_normal((1024, 1024), dtype=cupy.float32)
    host_us = host_time(lambda x: cupy_softmax.softmax(x, axis=-1), (xh,))
    print(f"host time per call (softmax 1024x1024): {host_us:.1f} us", flush=True)
    del xh

    skip = ("cupyx", "scipy") if args.no_others else ("scipy",) if args.no_scipy else ()
    dtypes = args.dtypes or (["float32", "float16"] if not args.quick else ["float32"])
    shapes = QUICK_ROW_SHAPES if args.quick else ROW_SHAPES
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            for op in OPS:
                r = bench_case(op, shape, dtype, -1, reps, l2, copy_gbps, skip)
                rows.append(r)
                print(f"{op:12s} {dtype:9s} {shape!s:16s} ours {fmt_us(r.get('ours')):>8s} us "
                      f"({r.get('ours_pct_copy', 0):.0f}% copy)  torch {fmt_us(r.get('torch')):>8s}  "
                      f"cupyx {fmt_us(r.get('cupyx')):>8s}", flush=True)
        for shape in AXIS0_SHAPES if not args.quick or dtype == "float32" else []:
            r = bench_case("softmax", shape, dtype, 0, reps, l2, copy_gbps, skip + ("cupyx", "scipy"))
            rows.append(r)
            print(f"softmax ax0   {dtype:9s} {shape!s:16s} ours {fmt_us(r.get('ours')):>8s} us "
                  f"({r.get('ours_pct_copy', 0):.0f}% copy)  torch {fmt_us(r.get('torch')):>8s}", flush=True)

    md = table(rows, gpu_desc, copy_gbps, host_us)
    print()
    print(md)
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump({"gpu": gpu_desc, "copy_gbps": copy_gbps, "host_us": host_us, "rows": rows}, f, indent=1)
    plot(rows, copy_gbps, os.path.join(args.out, "bench_gpu.png"))
    if not args.quick:
        import ceilings
        print()
        print(ceilings.run(args.out, max(10, reps // 2), copy_gbps), flush=True)
    if args.sweep:
        sw = sweep(max(10, reps // 2), l2, copy_gbps)
        print()
        print(sw)
        with open(os.path.join(args.out, "sweep.md"), "w") as f:
            f.write(sw + "\n")


if __name__ == "__main__":
    main()
