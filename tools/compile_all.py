#!/usr/bin/env python3
"""Compile every kernel on the GPU machine once, in parallel processes, and time it.

CuPy's disk cache then serves the tests, the sanitizer runs and the benchmarks of the
same machine.  Prints the seconds per module (softmax family, per dtype) and in all.
"""

import multiprocessing
import time


def build(job):
    kind, name, line = job
    t = time.perf_counter()
    if kind == "softmax":
        from cupy_softmax import _kernels
        _kernels.get_module(name)
    else:
        from cupy_softmax import _attention
        _attention._get_kernel(name, line, 0)
    return kind, name, time.perf_counter() - t


def main():
    from cupy_softmax import _attention, _kernels
    jobs = [("softmax", dtype, None) for dtype in _kernels.DTYPES]
    jobs += [("attention", name, line) for name, line in _attention.kernel_instances()]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(12) as pool:
        for kind, name, seconds in pool.imap_unordered(build, jobs):
            if kind == "softmax":
                print(f"softmax module {name}: {seconds:.1f} s", flush=True)
    print(f"compiled {len(jobs)} modules in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
