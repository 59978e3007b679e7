#!/usr/bin/env python3
"""A small run of every kernel variant, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/sanitize_run.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tools/sanitize_run.py --small

Odd sizes (1, 31, 33, 1023, 1025, 262147 columns; 1 and 3 rows) and every size-table
entry, misaligned and strided views, every dtype, softmax/log_softmax/logsumexp
(with and without weights and sign), rows and columns, the split (cluster and
cooperative) and three-pass paths, and the streaming kernels.  Results are also checked loosely
against float64 references, so a wrong answer fails here too.
"""

import argparse
import sys
import os

import numpy as np
import cupy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cupy_softmax as cs  # noqa: E402
from cupy_softmax import _cupy_backend, _kernels  # noqa: E402

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BF16 = None

TOL = {"float16": 3e-3, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-12}
SUBNORMAL = {"float16": 2.0 ** -24, "bfloat16": 2.0 ** -133, "float32": 2.0 ** -149,
             "float64": 2.0 ** -1074}
failures = []


def ref_softmax(x, axis, log):
    x = x.astype(np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return (x - m) - np.log(s) if log else e / s


def ref_lse(x, axis, b=None, cond=False):
    """(lse, sign) by the rules of _state.py: masked elements out, shift 0 if no max;
    with cond, also the condition number of the weighted sum, sum|terms| / |sum terms|
    (a float32 sum is only good to about n eps cond)."""
    x = x.astype(np.float64)
    w = np.ones_like(x) if b is None else b.astype(np.float64)
    x = np.where(w == 0, -np.inf, x)
    m = np.max(x, axis=axis, keepdims=True)
    sh = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(all="ignore"):
        t = w * np.exp(x - sh)
        s = np.sum(t, axis=axis)
        res = np.squeeze(sh, axis) + np.log(np.abs(s)), np.sign(s)
        return res + (np.sum(np.abs(t), axis=axis) / np.abs(s),) if cond else res


def check(what, got, want, dtype_name, kind):
    got = cupy.asnumpy(got).astype(np.float64)
    tol = TOL[dtype_name]
    if kind == "prob":
        sub = float(SUBNORMAL[dtype_name])
        ok = np.abs(got - want) <= tol * np.abs(want) + 4 * sub
    else:
        ok = np.abs(got - want) <= tol * (np.abs(want) + 1)
    ok |= np.isnan(got) & np.isnan(want)
    if not ok.all():
        i = np.argwhere(~ok)[0]
        failures.append(f"{what}: {int((~ok).sum())} bad, e.g. at {tuple(i)} got "
                        f"{got[tuple(i)]!r} want {want[tuple(i)]!r}")


def host(dtype_name, shape, rng, scale=4.0):
    x = rng.standard_normal(shape).astype(np.float32) * scale
    return x.astype(BF16 if dtype_name == "bfloat16" else dtype_name)


def run_case(tag, x_np, x, axis, dtype_name, rng, weights=True):
    for log in (False, True):
        out = (cs.log_softmax if log else cs.softmax)(x, axis=axis)
        check(f"{tag} {'log_softmax' if log else 'softmax'}", out, ref_softmax(x_np, axis, log),
              dtype_name, "log" if log else "prob")
    lse = cs.logsumexp(x, axis=axis)
    check(f"{tag} logsumexp", lse, ref_lse(x_np, axis)[0], dtype_name, "log")
    if weights:
        b_np = rng.standard_normal(x_np.shape).astype(np.float32)
        b_np[..., ::3] = 0
        b_np = b_np.astype(x_np.dtype)
        res, sgn = cs.logsumexp(x, axis=axis, b=cupy.asarray(b_np), return_sign=True)
        r, s, cond = ref_lse(x_np, axis, b_np, cond=True)
        keep = (np.abs(s) > 0) & (cond < 100)       # signed weights cancel: well-conditioned sums
        check(f"{tag} logsumexp(b)", cupy.where(cupy.asarray(keep), res, 0), np.where(keep, r, 0),
              dtype_name, "log")
        check(f"{tag} sign", cupy.where(cupy.asarray(keep), sgn, 0), np.where(keep, s, 0),
              dtype_name, "log")


def run(small):
    rng = np.random.default_rng(0)
    dtypes = ["float16", "float32", "float64"] + (["bfloat16"] if BF16 is not None else [])
    widths = [1, 31, 33, 1023, 1025] + ([] if small else [262147])
    for d in dtypes:
        isz = np.dtype(BF16 if d == "bfloat16" else d).itemsize
        # rows: odd sizes, every size-table entry, split rows
        sizes = sorted(set(widths + ([] if small else [e[0] for e in _kernels.ROW_TABLE[isz]])))
        for n in sizes:
            for rows in (1, 3):
                x_np = host(d, (rows, n), rng)
                run_case(f"{d} rows {rows}x{n}", x_np, cupy.asarray(x_np), -1, d, rng,
                         weights=n <= 1025 or rows == 3)
        # rows split over a cluster (enough rows that the size table applies; rows of a
        # whole number of 16-byte vectors), normalised against a given state too, and a
        # forced cluster over one row that ends inside a vector, its last block empty
        nrows = _kernels.sm_count() // 2 + 1
        vw = _kernels.vec_width(isz)
        table = _kernels.ROW_TABLE[isz]
        prev = {e[0]: p[0] for p, e in zip(table, table[1:])}
        clustered = [e for e in table if e[4] > 1]
        for max_n, threads, ept, _, g, _ in (clustered[:1] if small else clustered):
            for n in ((prev[max_n] + vw,) if small else (prev[max_n] + vw, max_n)):
                x_np = host(d, (nrows, n), rng)
                x = cupy.asarray(x_np)
                run_case(f"{d} cluster rows {nrows}x{n}", x_np, x, -1, d, rng, weights=False)
                st = cs.partial_state(x, axis=-1)
                check(f"{d} cluster rows {nrows}x{n} normalise", cs.softmax_from_state(x, st, axis=-1),
                      ref_softmax(x_np, -1, False), d, "prob")
            _cupy_backend.TUNE["row_entry"] = (threads, ept, g)
            try:
                n = threads * ept * (g - 1) - 3
                x_np = host(d, (1, n), rng)
                run_case(f"{d} forced cluster row 1x{n}", x_np, cupy.asarray(x_np), -1, d, rng,
                         weights=False)
            finally:
                _cupy_backend.TUNE.clear()
        # misaligned and strided views of rows
        big_np = host(d, (3, 2 * 1025 + 2), rng)
        big = cupy.asarray(big_np)
        run_case(f"{d} misaligned rows", big_np[:, 1:1026], big[:, 1:1026], -1, d, rng)
        run_case(f"{d} strided rows", big_np[:, ::2], big[:, ::2], -1, d, rng)
        run_case(f"{d} reversed rows", big_np[::-1, ::-1], big[::-1, ::-1], -1, d, rng)
        # columns (reduced axis not last): small and split n, narrow and vector inner
        for n, inner in ((1, 2), (31, 33), (33, 64), (1025, 64), (1025, 3)) + \
                (() if small else ((5000, 64), (3000, 130))):
            x_np = host(d, (3, n, inner), rng)
            run_case(f"{d} cols 3x{n}x{inner}", x_np, cupy.asarray(x_np), 1, d, rng)
        # columns over a cluster (sm_90): by the size table, and forced on slices that
        # leave the cluster's last ranks without rows
        x_np = host(d, (2, 2048, 128), rng)
        run_case(f"{d} cluster cols 2x2048x128", x_np, cupy.asarray(x_np), 1, d, rng)
        _cupy_backend.TUNE["col_cluster_strip"] = 128
        try:
            x_np = host(d, (2, 300, 64), rng)
            run_case(f"{d} forced cluster cols 2x300x64", x_np, cupy.asarray(x_np), 1, d, rng)
        finally:
            _cupy_backend.TUNE.clear()
        x_np = host(d, (1025, 66), rng)
        x = cupy.asarray(x_np)
        run_case(f"{d} misaligned cols", x_np[:, 1:65], x[:, 1:65], 0, d, rng)
        # three-pass fallbacks (stats -> merge -> normalise)
        _cupy_backend.TUNE["three_pass"] = True
        try:
            x_np = host(d, (3, 40000 if small else 262147), rng)
            run_case(f"{d} rows three-pass", x_np, cupy.asarray(x_np), -1, d, rng, weights=False)
            x_np = host(d, (2, 3000, 64), rng)
            run_case(f"{d} cols three-pass", x_np, cupy.asarray(x_np), 1, d, rng, weights=False)
        finally:
            _cupy_backend.TUNE.clear()
        # streaming: chunks -> states -> merge -> finalise / normalise
        for shape, axis in (((3, 1025), 1), ((1025, 5), 0), ((2, 77, 9), 1)):
            x_np = host(d, shape, rng)
            x = cupy.asarray(x_np)
            n = shape[axis]
            cuts = [0, 1, n // 3, n // 3, n - 1, n]
            pieces = [x[(slice(None),) * axis + (slice(a, b),)] for a, b in zip(cuts[:-1], cuts[1:])]
            states = [cs.partial_state(p, axis=axis) for p in pieces]
            merged = cs.merge_states(*states)
            lse = cs.state_logsumexp(merged)
            check(f"{d} streaming lse {shape}", lse, ref_lse(x_np, axis)[0], "float32"
                  if d != "float64" else d, "log")
            res, sgn = cs.state_logsumexp(merged, return_sign=True)
            check(f"{d} streaming sign {shape}", sgn, np.ones_like(ref_lse(x_np, axis)[0]), d, "log")
            for log, fn in ((False, cs.softmax_from_state), (True, cs.log_softmax_from_state)):
                outs = [fn(p, merged, axis=axis) for p in pieces]
                check(f"{d} streaming normalise {shape} log={log}", cupy.concatenate(outs, axis=axis),
                      ref_softmax(x_np, axis, log), d, "log" if log else "prob")
        cupy.cuda.Device().synchronize()
        print(f"{d}: done", flush=True)
    # special values (the semantics of _state.py)
    x_np = np.array([[0.0, -np.inf, 1.0], [np.inf, 1.0, 2.0], [np.nan, 0.0, 0.0],
                     [-np.inf, -np.inf, -np.inf]], np.float32)
    nan, inf = np.nan, np.inf
    l1 = np.log1p(np.exp(-1.0))
    want = {
        "softmax": [[1 / (1 + np.e), 0, np.e / (1 + np.e)], [nan] * 3, [nan] * 3, [nan] * 3],
        "log_softmax": [[-1 - l1, -inf, -l1], [nan, -inf, -inf], [nan] * 3, [nan] * 3],
        "logsumexp": [1 + l1, inf, nan, -inf],
    }
    for d in ("float32", "float64", "float16"):
        x = cupy.asarray(x_np.astype(d))
        for name, w in want.items():
            got = getattr(cs, name)(x, axis=1)
            g, w = cupy.asnumpy(got).astype(np.float64), np.array(w)
            with np.errstate(invalid="ignore"):           # inf - inf where both are inf
                ok = (np.isnan(g) == np.isnan(w)) & ((g == w) | np.isnan(w) | (np.abs(g - w) < 1e-3))
            if not ok.all():
                failures.append(f"special values {d} {name}: got {g.tolist()} want {w.tolist()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="skip the largest sizes (racecheck)")
    args = ap.parse_args()
    run(args.small)
    cupy.cuda.Device().synchronize()
    if failures:
        print(f"sanitize_run: {len(failures)} wrong results")
        for f in failures[:40]:
            print("  " + f)
        return 1
    print("sanitize_run: all results right")
    return 0


if __name__ == "__main__":
    sys.exit(main())
