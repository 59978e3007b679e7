#!/usr/bin/env python3
"""GPU benchmark of cupy_softmax.attention, decode attention and merge_attention, side by
side with torch's scaled_dot_product_attention backends (FLASH_ATTENTION, CUDNN_ATTENTION,
EFFICIENT_ATTENTION through torch.nn.attention.sdpa_kernel) in the same run.

Timing: CUDA events around each call, after warm-up; the median of --reps calls.
Decode and merge calls are short, so they are timed as CUDA-graph replays (both ours and
torch's), each queued behind a GPU spin so that neither the Python call nor the host's
replay call is timed; where a capture fails the eager time is reported instead (marked
"e").  Decode inputs smaller than 3x L2 are rotated over copies (one graph each), so
that K and V come from DRAM.  The "eager" columns time plain calls, host overhead
included.

Prefill: TFLOP/s = 4 * B * H * Lq * Lk * D / time, halved for causal.
Decode: GB/s = bytes of K and V read once / time.

    python bench/bench_attention.py --out bench/results [--quick] [--sections prefill decode merge]
                                    [--sweep] [--sweep-kinds prefill decode]

Writes attention.md (the tables), attention.json (all numbers) and attention.png (a plot,
if matplotlib is there) under --out, and prints the tables.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BACKENDS = ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"]


def _np_dtype(name):
    import numpy as np
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def cupy_view(t, dtype_name):
    """A CuPy array over a torch CUDA tensor's memory (no copy; any dtype)."""
    import cupy
    mem = cupy.cuda.UnownedMemory(t.data_ptr(), t.numel() * t.element_size(), t)
    strides = tuple(s * t.element_size() for s in t.stride())
    return cupy.ndarray(tuple(t.shape), _np_dtype(dtype_name), cupy.cuda.MemoryPointer(mem, 0),
                        strides=strides)


SPIN_US = 60       # GPU spin queued before each timed replay: longer than the host's enqueue


def _spin_cycles(us):
    import cupy
    return int(us * cupy.cuda.runtime.getDeviceProperties(0)["clockRate"] / 1000)


def _as_list(fns):
    return list(fns) if isinstance(fns, (list, tuple)) else [fns]


def time_eager(fns, reps, warmup=3):
    """Median event time of each call as a user makes it: the GPU idles while Python runs,
    so the host overhead counts.  Rotates over the calls of `fns` (one per input set)."""
    import torch
    fns = _as_list(fns)
    for i in range(warmup * len(fns)):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fns[i % len(fns)]()
        e1.record()
        times.append((e0, e1))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in times) * 1e-3


def time_graph_torch(fns, reps, warmup=3):
    """Median event time of one CUDA-graph replay, queued behind a GPU spin (the host's
    replay call is not timed), rotating over one graph per input set."""
    import torch
    fns = _as_list(fns)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(s)
    graphs, keep = [], []
    for fn in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            keep.append(fn())
        graphs.append(g)
    torch.cuda.synchronize()
    cycles = _spin_cycles(SPIN_US)
    times = []
    for i in range(reps):
        torch.cuda._sleep(cycles)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graphs[i % len(graphs)].replay()
        e1.record()
        times.append((e0, e1))
    torch.cuda.synchronize()
    del keep
    return statistics.median(a.elapsed_time(b) for a, b in times) * 1e-3


def time_graph_cupy(fns, reps, warmup=3):
    """As time_graph_torch, for calls on CuPy arrays."""
    import cupy
    from bench_gpu import time_op
    fns = _as_list(fns)
    s = cupy.cuda.Stream(non_blocking=True)
    cupy.cuda.Device().synchronize()
    graphs, keep = [], []
    with s:
        for _ in range(warmup):
            for fn in fns:
                fn()
        s.synchronize()
        for fn in fns:
            s.begin_capture()
            keep.append(fn())
            graphs.append(s.end_capture())
        for g in graphs:
            g.upload(s)
        us = time_op(lambda g: g.launch(s), [(g,) for g in graphs], reps, warmup=1, spin_us=SPIN_US)
    del keep
    return us * 1e-6


def timed(kind, fns, reps, graph):
    """(seconds, mark) with mark "" for a graph replay or eager as asked, "e" for an eager
    fallback after a failed capture."""
    if not graph:
        return time_eager(fns, reps), ""
    try:
        return (time_graph_cupy if kind == "cupy" else time_graph_torch)(fns, reps), ""
    except Exception as exc:  # capture not possible: eager
        print(f"  (graph capture failed for {kind}: {type(exc).__name__}: {exc}; eager)", file=sys.stderr)
        import torch
        torch.cuda.synchronize()
        return time_eager(fns, reps), "e"


def _l2_bytes():
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["l2CacheSize"]


def input_sets(nbytes, l2_bytes, cap=8):
    """How many copies of an input of nbytes make >= 3x L2 together (1 if one does)."""
    return int(min(cap, max(1, -(-3 * l2_bytes // nbytes))))


def torch_sdpa(backend, q, k, v, causal, gqa):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = getattr(SDPBackend, backend)
    kw = {"enable_gqa": True} if gqa else {}

    def fn():
        with sdpa_kernel(be):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, **kw)
    return fn


def time_backends(row, make_fns, work, reps, graph):
    """Time each torch backend: make_fns(backend) gives its call (or one call per input
    set); row[backend] = work / seconds, None where the backend fails.  Returns the first
    working backend's output, the reference for the error column."""
    ref = None
    for be in BACKENDS:
        try:
            fns = _as_list(make_fns(be))
            t, mark = timed("torch", fns, reps, graph)
            row[be], row[be + "_mark"] = work / t, mark
            if ref is None:
                ref = fns[0]()
        except Exception as exc:
            row[be] = None
            print(f"  {be} failed: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
    return ref


def rel_err(a_torch, b_cupy):
    """||a - b|| / ||a|| of a torch reference and our CuPy result (same dtype and shape)."""
    import numpy as np
    import torch
    b = torch.empty(tuple(b_cupy.shape), dtype=a_torch.dtype, device="cuda")
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[b_cupy.dtype.itemsize]
    cupy_view(b, b_cupy.dtype.name).view(bits)[...] = b_cupy.view(bits)
    torch.cuda.synchronize()
    a = a_torch.float()
    return float((a - b.float()).norm() / a.norm())


# ---------------------------------------------------------------------------------

def bench_prefill(args, gpu):
    import torch
    from cupy_softmax._attention import attention
    rows = []
    seqs = [1024, 4096] if args.quick else [1024, 4096, 16384]
    for dtype in args.dtypes:
        tdt = getattr(torch, dtype)
        for D in (64, 128):
            for S in seqs:
                B = 32768 // S
                H = 16
                g = torch.Generator(device="cuda").manual_seed(S + D)
                q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=tdt, generator=g) for _ in range(3))
                cq, ck, cv = (cupy_view(t, dtype) for t in (q, k, v))
                for causal in (False, True):
                    flops = 4 * B * H * S * S * D / (2 if causal else 1)
                    row = {"dtype": dtype, "B": B, "H": H, "S": S, "D": D, "causal": causal}
                    ours = lambda: attention(cq, ck, cv, causal=causal)
                    t, _ = timed("cupy", ours, args.reps, graph=False)
                    row["ours"] = flops / t / 1e12
                    ref = time_backends(row, lambda be: torch_sdpa(be, q, k, v, causal, False),
                                        flops / 1e12, args.reps, graph=False)
                    if ref is not None:
                        row["rel_err"] = rel_err(ref, attention(cq, ck, cv, causal=causal))
                    rows.append(row)
                    print(_fmt_prefill_row(row), flush=True)
                del q, k, v, cq, ck, cv
                torch.cuda.empty_cache()
    return rows


def _f(x, nd=0):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _fmt_prefill_row(r):
    return (f"| {r['dtype']} | {r['B']} | {r['H']} | {r['S']} | {r['D']} | {r['causal']} | "
            f"**{_f(r['ours'])}** | {_f(r.get('FLASH_ATTENTION'))} | {_f(r.get('CUDNN_ATTENTION'))} | "
            f"{_f(r.get('EFFICIENT_ATTENTION'))} | {r['ours'] / r['FLASH_ATTENTION'] if r.get('FLASH_ATTENTION') else float('nan'):.2f} | "
            f"{r.get('rel_err', float('nan')):.1e} |")


PREFILL_HEAD = ("| dtype | B | H | S | D | causal | ours | torch FLASH | torch CUDNN | torch EFFICIENT "
                "| ours/FLASH | rel. err vs FLASH |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def bench_decode(args, gpu):
    import torch
    from cupy_softmax._attention import attention
    rows = []
    shapes = [(1, 8192), (1, 131072), (16, 8192), (16, 32768), (64, 4096)]
    Hq, D = 32, 128
    for hkv in (32, 8):
        for B, L in shapes:
            g = torch.Generator(device="cuda").manual_seed(B * L + hkv)
            nbytes = 2 * B * hkv * L * D * 2
            sets = []
            for _ in range(input_sets(nbytes, _l2_bytes())):
                q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.float16, generator=g)
                k, v = (torch.randn(B, hkv, L, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(2))
                sets.append((q, k, v, *(cupy_view(t, "float16") for t in (q, k, v))))
            q, k, v, cq, ck, cv = sets[0]
            row = {"B": B, "kv_len": L, "Hq": Hq, "Hkv": hkv, "D": D, "sets": len(sets)}
            ours = [lambda s=st: attention(s[3], s[4], s[5]) for st in sets]
            t, mark = timed("cupy", ours, args.reps, graph=True)
            row["ours"], row["ours_mark"] = nbytes / t / 1e9, mark
            row["ours_us"] = t * 1e6
            te, _ = timed("cupy", ours, args.reps, graph=False)
            row["ours_eager"] = nbytes / te / 1e9
            ref = time_backends(
                row, lambda be: [torch_sdpa(be, st[0], st[1], st[2], False, hkv != Hq) for st in sets],
                nbytes / 1e9, args.reps, graph=True)
            if ref is not None:
                row["rel_err"] = rel_err(ref, attention(cq, ck, cv))
            rows.append(row)
            print(_fmt_decode_row(row), flush=True)
            del q, k, v, cq, ck, cv, sets, ours
            torch.cuda.empty_cache()
    return rows


def _fmt_decode_row(r):
    def c(be):
        return _f(r.get(be)) + (r.get(be + "_mark") or "")
    return (f"| {r['B']} | {r['kv_len']} | {r['Hq']} | {r['Hkv']} | {r['D']} | **{_f(r['ours'])}**{r['ours_mark']} "
            f"| {_f(r['ours_eager'])} | {r['ours_us']:.1f} | {c('FLASH_ATTENTION')} | {c('CUDNN_ATTENTION')} | "
            f"{c('EFFICIENT_ATTENTION')} | {r.get('rel_err', float('nan')):.1e} |")


DECODE_HEAD = ("| B | kv_len | Hq | Hkv | D | ours GB/s (graph) | ours GB/s (eager) | ours us | torch FLASH | "
               "torch CUDNN | torch EFFICIENT | rel. err |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def bench_merge(args, gpu):
    import cupy
    import numpy as np
    from cupy_softmax._attention import merge_attention
    rows = []
    for parts, shape, dtype in [(8, (16, 32, 1, 128), "float16"), (8, (16, 32, 1, 128), "float32"),
                                (2, (16, 32, 1, 128), "float16"), (16, (16, 32, 1, 128), "float16"),
                                (8, (4, 32, 256, 128), "float16")]:
        rs = cupy.random.RandomState(parts)
        outs = [rs.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(parts)]
        lses = [rs.standard_normal(shape[:-1], dtype=np.float32) for _ in range(parts)]
        t, mark = timed("cupy", lambda: merge_attention(outs, lses), args.reps, graph=True)
        te, _ = timed("cupy", lambda: merge_attention(outs, lses), args.reps, graph=False)
        nbytes = parts * (outs[0].nbytes + lses[0].nbytes) + outs[0].nbytes + lses[0].nbytes
        row = {"parts": parts, "shape": list(shape), "dtype": dtype, "us": t * 1e6, "mark": mark,
               "eager_us": te * 1e6, "GBps": nbytes / t / 1e9}
        rows.append(row)
        print(_fmt_merge_row(row), flush=True)
    return rows


def _fmt_merge_row(r):
    return (f"| {r['parts']} | {tuple(r['shape'])} | {r['dtype']} | **{r['us']:.1f}**{r['mark']} | "
            f"{r['eager_us']:.1f} | {r['GBps']:.0f} |")


MERGE_HEAD = ("| parts | shape | dtype | us (graph) | us (eager, incl. Python) | GB/s |\n"
              "|---|---|---|---|---|---|")


def bench_sweep(args, gpu):
    """Kernel-shape variants (_attention.CANDIDATES, through TUNE) on the issue's shapes:
    prefill TFLOP/s, decode GB/s, each with its error against torch FLASH."""
    import torch
    from cupy_softmax import _attention as A
    from cupy_softmax._attention import attention
    rows = []
    for D, variants in (A.CANDIDATES["prefill"].items() if "prefill" in args.sweep_kinds else ()):
        for S, causal in ((1024, False), (1024, True), (4096, False), (4096, True)):
            B, H = 32768 // S, 16
            g = torch.Generator(device="cuda").manual_seed(7)
            q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
            cq, ck, cv = (cupy_view(t, "float16") for t in (q, k, v))
            ref = torch_sdpa("FLASH_ATTENTION", q, k, v, causal, False)()
            flops = 4 * B * H * S * S * D / (2 if causal else 1)
            for cfg in variants:
                A.TUNE["prefill"] = {**A.PREFILL, D: cfg}
                try:
                    t, _ = timed("cupy", lambda: attention(cq, ck, cv, causal=causal), args.reps, graph=False)
                    res = flops / t / 1e12
                    err = rel_err(ref, attention(cq, ck, cv, causal=causal))
                except Exception as exc:
                    res = err = None
                    print(f"  {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                rows.append({"kind": "prefill", "D": D, "S": S, "causal": causal, "cfg": list(cfg),
                             "value": res, "rel_err": err})
                print(f"| prefill D={D} S={S} causal={causal} | {tuple(cfg)} | {_f(res)} TFLOP/s | {err} |", flush=True)
            A.TUNE.pop("prefill", None)
            del q, k, v, cq, ck, cv, ref
    decode_shapes = [(32, 1, 8192), (8, 1, 8192), (32, 1, 131072), (8, 16, 8192), (32, 16, 32768)]
    for hkv, B, L in (decode_shapes if "decode" in args.sweep_kinds else ()):
        g = torch.Generator(device="cuda").manual_seed(8)
        q = torch.randn(B, 32, 1, 128, device="cuda", dtype=torch.float16, generator=g)
        k, v = (torch.randn(B, hkv, L, 128, device="cuda", dtype=torch.float16, generator=g) for _ in range(2))
        cq, ck, cv = (cupy_view(t, "float16") for t in (q, k, v))
        ref = torch_sdpa("FLASH_ATTENTION", q, k, v, False, hkv != 32)()
        nbytes = 2 * B * hkv * L * 128 * 2
        # each candidate as dispatched, then the table's config with every split merged
        # through global memory (the on-chip finish off)
        for cfg, on_chip in [(c, True) for c in A.CANDIDATES["decode"][128]] + [(A.DECODE[128], False)]:
            A.TUNE["decode"] = {**A.DECODE, 128: cfg}
            A.TUNE["on_chip"] = on_chip
            try:
                t, mark = timed("cupy", lambda: attention(cq, ck, cv), args.reps, graph=True)
                res = nbytes / t / 1e9
                err = rel_err(ref, attention(cq, ck, cv))
            except Exception as exc:
                res = err = None
                print(f"  {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            rows.append({"kind": "decode", "B": B, "L": L, "Hkv": hkv, "cfg": list(cfg), "on_chip": on_chip,
                         "value": res, "rel_err": err})
            print(f"| decode B={B} L={L} Hkv={hkv} | {tuple(cfg)}{'' if on_chip else ' global finish'} | "
                  f"{_f(res)} GB/s | {err} |", flush=True)
        A.TUNE.pop("decode", None)
        A.TUNE.pop("on_chip", None)
    return rows


_PLOT_SERIES = [("ours", "cupy_softmax"), ("FLASH_ATTENTION", "torch FLASH"),
                ("CUDNN_ATTENTION", "torch cuDNN"), ("EFFICIENT_ATTENTION", "torch EFFICIENT")]


def _bars(ax, rows, labels, ylabel, title):
    """Grouped bars, one group per row and one bar per library."""
    x = range(len(rows))
    w = 0.2
    for i, (key, name) in enumerate(_PLOT_SERIES):
        ax.bar([xi + (i - 1.5) * w for xi in x], [r.get(key) or 0 for r in rows], w, label=name)
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=70, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    pre = results.get("prefill") or []
    if pre:
        _bars(axes[0], pre, [f"{r['dtype'][:4]} S{r['S']} D{r['D']}{' c' if r['causal'] else ''}" for r in pre],
              "TFLOP/s", "attention forward (B*S = 32768, 16 heads)")
    dec = results.get("decode") or []
    if dec:
        _bars(axes[1], dec, [f"B{r['B']} L{r['kv_len']} kv{r['Hkv']}" for r in dec],
              "GB/s (K and V read once)", "decode attention, q_len 1, 32 heads, D 128, float16")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    ap.add_argument("--sections", nargs="+", default=["prefill", "decode", "merge"],
                    choices=["prefill", "decode", "merge", "sweep"])
    ap.add_argument("--sweep", action="store_true", help="also time kernel-shape variants")
    ap.add_argument("--sweep-kinds", nargs="+", default=["prefill", "decode"], choices=["prefill", "decode"],
                    help="which variants the sweep times")
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 10 if args.quick else 30
    sections = list(args.sections) + (["sweep"] if args.sweep and "sweep" not in args.sections else [])

    import cupy
    import torch
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    from bench_gpu import copy_bandwidth
    copy = copy_bandwidth()
    header = (f"GPU {gpu} ({props['multiProcessorCount']} SMs), torch {torch.__version__}, "
              f"CuPy {cupy.__version__}; device-to-device copy {copy:.0f} GB/s (read + write, 2 GiB) "
              f"in the same run; CUDA events, median of {args.reps}")
    print(header, flush=True)
    results = {"gpu": gpu, "header": header, "copy_GBps": copy}
    md = [f"# Attention benchmark\n\n{header}.\n"]
    t0 = time.time()
    if "prefill" in sections:
        print("\n## attention forward (TFLOP/s = 4 B H S^2 D / time, halved for causal)\n" + PREFILL_HEAD, flush=True)
        results["prefill"] = bench_prefill(args, gpu)
        md.append("## attention forward (TFLOP/s = 4 B H S^2 D / time, halved for causal)\n\n" + PREFILL_HEAD
                  + "\n" + "\n".join(_fmt_prefill_row(r) for r in results["prefill"]) + "\n")
    if "decode" in sections:
        print("\n## decode attention, q_len 1, float16 (GB/s = bytes of K and V / time)\n" + DECODE_HEAD, flush=True)
        results["decode"] = bench_decode(args, gpu)
        md.append("## decode attention, q_len 1, float16 (GB/s = bytes of K and V / time; "
                  "graph replays, e = eager fallback)\n\n" + DECODE_HEAD + "\n"
                  + "\n".join(_fmt_decode_row(r) for r in results["decode"]) + "\n")
    if "merge" in sections:
        print("\n## merge_attention\n" + MERGE_HEAD, flush=True)
        results["merge"] = bench_merge(args, gpu)
        md.append("## merge_attention (graph replays; eager includes the Python call)\n\n" + MERGE_HEAD + "\n"
                  + "\n".join(_fmt_merge_row(r) for r in results["merge"]) + "\n")
    if "sweep" in sections:
        print("\n## kernel-shape sweep (float16)", flush=True)
        results["sweep"] = bench_sweep(args, gpu)
        md.append("## kernel-shape sweep (float16; TCConfig = D, MI, WM, WN, BNW, STAGES, MINB)\n\n"
                  "| case | config | result | rel. err vs FLASH |\n|---|---|---|---|\n"
                  + "\n".join(f"| {r['kind']} {({k: v for k, v in r.items() if k not in ('kind', 'cfg', 'value', 'rel_err')})} "
                              f"| {tuple(r['cfg'])} | {_f(r['value'])} | "
                              f"{'n/a' if r['rel_err'] is None else format(r['rel_err'], '.1e')} |"
                              for r in results["sweep"]) + "\n")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.md").write_text("\n".join(md))
    (out / "attention.json").write_text(json.dumps(results, indent=1))
    if plot(results, out / "attention.png"):
        print(f"plot: {out / 'attention.png'}")
    print(f"\n(total {time.time() - t0:.0f} s)\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
