#!/usr/bin/env python3
"""Dask benchmark: a (rows x 1,000,000) logsumexp over chunks against the in-memory call.

    python bench/bench_dask.py [--rows 64] [--cols 1000000] [--chunk 125000] [--gpu] [--write FILE]

The same random data (standard normal * 10, float32) is reduced along axis 1 by
``cupy_softmax.logsumexp`` once as one in-memory array and once as a Dask array
of (rows x chunk) blocks, whose per-chunk states merge in dask's tree.  With
--gpu the chunks are CuPy arrays (our kernels run on each chunk; synchronous
scheduler, one GPU) and times come from the host clock around a synchronised
call; without it, NumPy chunks on dask's threaded scheduler.  Median of --reps
after a warm-up.
"""

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, reps, sync):
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--cols", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=125_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--write", metavar="FILE")
    args = parser.parse_args(argv)

    import dask.array as da

    import cupy_softmax as cs

    x = (np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32) * 10)
    if args.gpu:
        import cupy
        xp, scheduler = cupy, "synchronous"
        sync = cupy.cuda.get_current_stream().synchronize
        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        xp, scheduler, sync = np, "threads", (lambda: None)
        device = "CPU (NumPy chunks)"
    data = xp.asarray(x)
    chunked = da.from_array(data, chunks=(args.rows, args.chunk), asarray=False)

    in_memory = _median_ms(lambda: cs.logsumexp(data, axis=1), args.reps, sync)
    lazy = cs.logsumexp(chunked, axis=1)
    over_chunks = _median_ms(lambda: lazy.compute(scheduler=scheduler), args.reps, sync)
    result = lazy.compute(scheduler=scheduler)
    reference = cs.logsumexp(data, axis=1)
    err = float(xp.max(xp.abs(result - reference) / xp.abs(reference)))

    gb = x.nbytes / 1e9
    lines = [
        f"Dask logsumexp, {device}: float32 ({args.rows} x {args.cols:,}), axis=1, "
        f"chunks of ({args.rows} x {args.chunk:,}), {len(chunked.chunks[1])} chunks; "
        f"median of {args.reps}",
        "",
        "| call | ms | GB/s of input |",
        "| --- | ---: | ---: |",
        f"| in memory: `logsumexp(x, axis=1)` | {in_memory:.2f} | {gb / in_memory * 1e3:.1f} |",
        f"| Dask ({scheduler}): `logsumexp(dx, axis=1).compute()` | {over_chunks:.2f} | "
        f"{gb / over_chunks * 1e3:.1f} |",
        "",
        f"max relative difference between the two: {err:.1e}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
