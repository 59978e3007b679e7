"""``python -m cupy_softmax``: the environment, a self-check against scipy.special, timings.

Works with or without a GPU and finishes in well under a minute::

    python -m cupy_softmax               # environment, self-check, timings
    python -m cupy_softmax --no-timing   # environment and self-check only
    python -m cupy_softmax --quick       # smaller timing shapes

Exit status 1 when any self-check fails.
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import sys
import time
import traceback
import warnings

import numpy as np
import scipy
import scipy.special

import cupy_softmax

FUNCTIONS = ("softmax", "log_softmax", "logsumexp")
DTYPES = (np.float32, np.float64)
# (rtol, atol) per result dtype; softmax lies in [0, 1], the log-space results
# are compared relative to their magnitude.
_SHOW_TRACEBACKS = False
TOLERANCES = {np.dtype(np.float32): (2e-5, 2e-6), np.dtype(np.float64): (1e-12, 1e-14)}


# ----------------------------------------------------------------- environment

def _dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class Env:
    cupy = None
    gpu_name = None
    torch = None
    torch_gpu = False


def environment():
    env = Env()
    rows = [
        ("python", f"{platform.python_version()} ({platform.python_implementation()}, "
                   f"{platform.system()} {platform.machine()})"),
        ("cupy_softmax", f"{cupy_softmax.__version__} ({os.path.dirname(cupy_softmax.__file__)})"),
        ("numpy", np.__version__),
        ("scipy", scipy.__version__),
    ]
    if importlib.util.find_spec("cupy") is None:
        rows.append(("cupy", "not installed"))
    else:
        try:
            import cupy
            env.cupy = cupy
            rows.append(("cupy", cupy.__version__))
        except Exception as exc:  # a broken CUDA install shows here, not as a crash
            rows.append(("cupy", f"installed but import failed: {exc!r}"))
    if env.cupy is not None:
        try:
            cupy = env.cupy
            if cupy.cuda.runtime.getDeviceCount() > 0:
                props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
                name = props["name"]
                env.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
                rows.append(("cuda runtime", _cuda_version(cupy.cuda.runtime.runtimeGetVersion())))
                rows.append(("cuda driver", _cuda_version(cupy.cuda.runtime.driverGetVersion())))
                rows.append(("ml_dtypes", _dist_version("ml_dtypes") or "not installed"))
        except Exception as exc:
            rows.append(("cuda", f"no usable device: {exc!r}"))
    rows.append(("gpu", env.gpu_name or "none"))
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch
            env.torch = torch
            env.torch_gpu = bool(torch.cuda.is_available())
            rows.append(("torch", f"{torch.__version__} (cuda available: {env.torch_gpu})"))
        except Exception as exc:
            rows.append(("torch", f"installed but import failed: {exc!r}"))
    else:
        rows.append(("torch", "not installed"))
    rows.append(("dask", _dist_version("dask") or "not installed"))
    print("## Environment")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()
    return env


def _cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


# ------------------------------------------------------------------ self-check

def _cases():
    """(label, function name, args, kwargs) on float64 NumPy data; cast per dtype later."""
    rng = np.random.default_rng(0)
    normal2 = rng.standard_normal((5, 37)) * 10
    normal3 = rng.standard_normal((3, 4, 50)) * 10
    long_rows = rng.standard_normal((2, 100_003)) * 10
    inf, nan = np.inf, np.nan
    infs = np.array([[inf, 0, 1, 2], [-inf, 0, 1, 2], [inf, -inf, 0, 1],
                     [inf, inf, 0, 0], [-inf, -inf, -inf, -inf]])
    nans = np.array([[nan, 0, 1, 2], [nan, inf, -inf, 0], [0, 1, 2, 3]])
    spread = np.array([[1e4, 0, -1e4, 3], [-1e4, -1e4, 1e-30, 0]])

    cases = []
    for fn in FUNCTIONS:
        cases += [
            ("normal (5, 37), axis=-1", fn, (normal2,), {"axis": -1}),
            ("normal (5, 37), axis=0", fn, (normal2,), {"axis": 0}),
            ("normal (5, 37), axis=None", fn, (normal2,), {}),
            ("normal (3, 4, 50), axis=1", fn, (normal3,), {"axis": 1}),
            ("normal (3, 4, 50), axis=(0, 2)", fn, (normal3,), {"axis": (0, 2)}),
            ("long rows (2, 100003), axis=-1", fn, (long_rows,), {"axis": -1}),
            ("long columns (100003, 2), axis=0", fn, (np.ascontiguousarray(long_rows.T),), {"axis": 0}),
            ("near +-finfo.max, axis=-1", fn, ("near_max",), {"axis": -1}),
            ("near +-finfo.max, axis=0", fn, ("near_max",), {"axis": 0}),
            ("+-inf and an all -inf row, axis=-1", fn, (infs,), {"axis": -1}),
            ("+-inf and an all -inf row, axis=0", fn, (infs,), {"axis": 0}),
            ("NaN, axis=-1", fn, (nans,), {"axis": -1}),
            ("huge spread, axis=-1", fn, (spread,), {"axis": -1}),
        ]
    a = np.array([[1, inf, nan, 2], [0, 1, 2, 3], [5, 5, 5, 5]])
    b = np.array([[1, 0, 0, 2], [1, -1, 1, -1], [1, -1, 0, 0]])
    cases += [
        ("b == 0 masks inf/NaN, return_sign, keepdims", "logsumexp", (a,),
         {"axis": -1, "b": b, "return_sign": True, "keepdims": True}),
        ("negative sum without return_sign is NaN", "logsumexp", (np.zeros((2, 2)),),
         {"axis": -1, "b": np.array([1.0, -2.0])}),
        ("b broadcasting, axis=0", "logsumexp", (normal2,), {"axis": 0, "b": np.linspace(0, 2, 37)}),
    ]
    return cases


def _materialise(arg, dtype):
    if isinstance(arg, str) and arg == "near_max":
        big = np.finfo(dtype).max
        return np.array([[big, big, big], [big, -big, 0], [-big, -big, -big],
                         [big, big / 2, -1]], dtype=dtype)
    if isinstance(arg, np.ndarray):
        with np.errstate(over="ignore"):
            return arg.astype(dtype)
    return arg


def _scipy_call(fn, args, kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return getattr(scipy.special, fn)(*args, **kwargs)


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _compare(ours, reference, expected_dtype, rtol, atol):
    """'' when ``ours`` matches ``reference`` (both NumPy), else the reason."""
    ours = np.asarray(ours)
    if ours.dtype != expected_dtype:
        return f"dtype {ours.dtype}, scipy gives {expected_dtype}"
    with np.errstate(all="ignore"):
        ref = np.asarray(reference).astype(expected_dtype)
    if ours.shape != ref.shape:
        return f"shape {ours.shape}, scipy gives {ref.shape}"
    ours64 = ours.astype(np.complex128 if ours.dtype.kind == "c" else np.float64)
    ref64 = ref.astype(ours64.dtype)
    bad_nan = np.isnan(ours64) != np.isnan(ref64)
    if bad_nan.any():
        return f"NaN where scipy has none, or the reverse, at {np.argwhere(bad_nan)[:3].tolist()}"
    inf_mismatch = (np.isinf(ours64) | np.isinf(ref64)) & ~np.isnan(ref64) & (ours64 != ref64)
    if inf_mismatch.any():
        i = tuple(np.argwhere(inf_mismatch)[0])
        return f"inf mismatch at {list(i)}: {ours64[i]} vs scipy {ref64[i]}"
    finite = np.isfinite(ref64)
    if not np.allclose(ours64[finite], ref64[finite], rtol=rtol, atol=atol):
        err = np.abs(ours64[finite] - ref64[finite])
        i = int(np.argmax(err))
        return f"max abs error {err[i]:.3g} (ours {ours64[finite][i]!r}, scipy {ref64[finite][i]!r})"
    return ""


def _run_check(env, backend, label, fn, args, kwargs, dtype):
    np_args = tuple(_materialise(a, dtype) for a in args)
    np_kwargs = {k: _materialise(v, dtype) for k, v in kwargs.items()}
    # scipy on the same dtype gives the expected result types; scipy on float64 the values.
    same = _as_tuple(_scipy_call(fn, np_args, np_kwargs))
    ref64 = _as_tuple(_scipy_call(
        fn, tuple(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in np_args),
        {k: v.astype(np.float64) if isinstance(v, np.ndarray) else v for k, v in np_kwargs.items()}))
    if backend == "cupy":
        cp = env.cupy
        call_args = tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in np_args)
        call_kwargs = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v
                       for k, v in np_kwargs.items()}
    else:
        call_args, call_kwargs = np_args, np_kwargs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = getattr(cupy_softmax, fn)(*call_args, **call_kwargs)
        if backend == "cupy":
            env.cupy.cuda.get_current_stream().synchronize()
    runtime_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    if runtime_warnings:
        return f"RuntimeWarning escaped: {runtime_warnings[0].message}"
    results = _as_tuple(result)
    if len(results) != len(ref64):
        return f"returned {len(results)} values, scipy {len(ref64)}"
    for ours, ref, scipy_same in zip(results, ref64, same):
        exp_dtype = np.asarray(scipy_same).dtype
        if backend == "cupy":
            if not isinstance(ours, env.cupy.ndarray):
                return f"returned {type(ours).__name__}, not a CuPy array"
            ours = ours.get()
        elif type(ours) is not type(scipy_same):
            return f"returned {type(ours).__name__}, scipy {type(scipy_same).__name__}"
        rtol, atol = TOLERANCES[np.dtype(np.float32) if exp_dtype.itemsize <= 4 else np.dtype(np.float64)]
        if fn != "softmax":
            atol = rtol
        problem = _compare(ours, ref, exp_dtype, rtol, atol)
        if problem:
            return problem
    return ""


def _scalar_and_list_checks():
    """Python scalars, lists and 0-d inputs on the NumPy path: same values and types as scipy."""
    checks = [
        ("python float", "softmax", (3.0,), {}),
        ("python float", "logsumexp", (3.0,), {}),
        ("0-d float32", "log_softmax", (np.float32(2.5),), {}),
        ("0-d float64", "logsumexp", (np.array(2.5),), {}),
        ("nested list", "softmax", ([[1, 2], [3, 4]],), {"axis": 1}),
        ("nested list", "logsumexp", ([[1, 2], [3, 4]],), {"axis": 0, "b": [2, 0.5]}),
        ("int list gives float64", "log_softmax", ([1, 2, 3],), {}),
    ]
    out = []
    for label, fn, args, kwargs in checks:
        try:
            ref = _scipy_call(fn, args, kwargs)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ours = getattr(cupy_softmax, fn)(*args, **kwargs)
            problem = ""
            if any(issubclass(w.category, RuntimeWarning) for w in caught):
                problem = "RuntimeWarning escaped"
            elif type(ours) is not type(ref):
                problem = f"returned {type(ours).__name__}, scipy {type(ref).__name__}"
            else:
                problem = _compare(ours, ref, np.asarray(ref).dtype, 1e-12, 1e-12)
        except Exception as exc:
            problem = f"raised {exc!r}"
        out.append((label, fn, problem))
    return out


def self_check(env):
    print("## Self-check against scipy.special")
    backends = ["numpy"]
    if env.cupy is not None and env.gpu_name is not None:
        backends.append("cupy")
    failures = 0
    passes = 0
    for backend in backends:
        for dtype in DTYPES:
            for label, fn, args, kwargs in _cases():
                try:
                    problem = _run_check(env, backend, label, fn, args, kwargs, dtype)
                except Exception as exc:
                    problem = f"raised {type(exc).__name__}: {exc}"
                    if _SHOW_TRACEBACKS:
                        traceback.print_exc()
                status = "FAIL" if problem else "PASS"
                failures += bool(problem)
                passes += not problem
                line = f"  {status}  {backend:<5}  {np.dtype(dtype).name:<7}  {fn:<11}  {label}"
                print(line + (f": {problem}" if problem else ""))
        if backend == "numpy":
            for label, fn, problem in _scalar_and_list_checks():
                status = "FAIL" if problem else "PASS"
                failures += bool(problem)
                passes += not problem
                line = f"  {status}  {backend:<5}  {'-':<7}  {fn:<11}  {label}"
                print(line + (f": {problem}" if problem else ""))
    print(f"\n  {passes} passed, {failures} failed")
    print()
    return failures


# --------------------------------------------------------------------- timings

def _median_seconds(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_timings(quick):
    shape = (256, 4096) if quick else (1024, 8192)
    repeats = 3 if quick else 5
    rng = np.random.default_rng(1)
    print(f"## CPU timings: NumPy path vs scipy.special, shape {shape}, median of {repeats}")
    print()
    print("| function | dtype | axis | ours ms | scipy ms | speedup |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for dtype in DTYPES:
        x = (rng.standard_normal(shape, dtype=np.float64) * 10).astype(dtype)
        for axis in (-1, 0):
            for fn in FUNCTIONS:
                ours = _median_seconds(lambda: getattr(cupy_softmax, fn)(x, axis=axis), repeats)
                ref = _median_seconds(lambda: _scipy_call(fn, (x,), {"axis": axis}), repeats)
                print(f"| {fn} | {np.dtype(dtype).name} | {axis} | {ours * 1e3:.2f} | "
                      f"{ref * 1e3:.2f} | {ref / ours:.2f}x |")
    print()


def _gpu_median_ms(cp, fn, repeats=20, warmup=3):
    """Median over ``repeats`` of CUDA-event time on CuPy's current stream."""
    for _ in range(warmup):
        fn()
    stream = cp.cuda.get_current_stream()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def first_call_cost(env):
    """Wall time of the first GPU call of each function: the kernels' compile (or cache load)."""
    cp = env.cupy
    print("## First GPU calls (NVRTC compile, or load from CuPy's kernel cache)")
    x = cp.random.standard_normal((1024, 1024), dtype=cp.float32)
    cp.cuda.Device().synchronize()
    for fn, kwargs in (("softmax", {"axis": -1}), ("log_softmax", {"axis": -1}),
                       ("logsumexp", {"axis": -1}), ("softmax", {"axis": 0})):
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            getattr(cupy_softmax, fn)(x, **kwargs)
            cp.cuda.Device().synchronize()
            timings.append(time.perf_counter() - t0)
        print(f"  {fn}(float32 1024x1024, {kwargs}): first call {timings[0] * 1e3:.1f} ms, "
              f"second {timings[1] * 1e3:.2f} ms")
    print()


def gpu_timings(env, quick):
    cp = env.cupy
    import cupyx.scipy.special as cpx_special

    torch = env.torch if env.torch_gpu else None
    shapes = [((4096, 4096), "float32"), ((1, 262144), "float32")]
    if not quick:
        shapes = [((65536, 128), "float32"), ((4096, 4096), "float32"),
                  ((8192, 32000), "float32"), ((8192, 32000), "float16"), ((1, 262144), "float32")]
    print(f"## GPU timings on {env.gpu_name}: median CUDA-event time (ms) of 20 calls, axis=-1")
    print()
    header = "| function | shape | dtype | ours ms | GB/s | cupyx ms | vs cupyx |"
    sep = "| --- | --- | --- | ---: | ---: | ---: | ---: |"
    if torch is not None:
        header += " torch ms | vs torch |"
        sep += " ---: | ---: |"
    print(header)
    print(sep)
    torch_fns = {"softmax": lambda t: torch.softmax(t, dim=-1),
                 "log_softmax": lambda t: torch.log_softmax(t, dim=-1),
                 "logsumexp": lambda t: torch.logsumexp(t, dim=-1)}
    for shape, dtype in shapes:
        x = cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype) * 10
        for fn in FUNCTIONS:
            ours = _gpu_median_ms(cp, lambda: getattr(cupy_softmax, fn)(x, axis=-1))
            out_bytes = x.nbytes if fn != "logsumexp" else x.nbytes // shape[-1]
            gbps = (x.nbytes + out_bytes) / (ours * 1e-3) / 1e9
            cpx = _gpu_median_ms(cp, lambda: getattr(cpx_special, fn)(x, axis=-1), repeats=5)
            row = (f"| {fn} | {shape[0]}x{shape[1]} | {dtype} | {ours:.3f} | {gbps:.0f} | "
                   f"{cpx:.3f} | {cpx / ours:.1f}x |")
            if torch is not None:
                t = torch.from_dlpack(x)
                tms = _gpu_median_ms(cp, lambda: torch_fns[fn](t))
                row += f" {tms:.3f} | {tms / ours:.2f}x |"
            print(row)
        del x
        cp.get_default_memory_pool().free_all_blocks()
    print()


# ------------------------------------------------------------------------ main

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cupy_softmax", description=__doc__.split("\n")[0])
    parser.add_argument("--no-timing", action="store_true", help="skip the timing tables")
    parser.add_argument("--quick", action="store_true", help="smaller timing shapes")
    parser.add_argument("--traceback", action="store_true", help="print tracebacks of failing checks")
    args = parser.parse_args(argv)
    global _SHOW_TRACEBACKS
    _SHOW_TRACEBACKS = args.traceback
    t_start = time.perf_counter()
    print(f"# cupy_softmax {cupy_softmax.__version__}\n")
    env = environment()
    gpu = env.cupy is not None and env.gpu_name is not None
    failures = 0
    if gpu:
        try:
            first_call_cost(env)  # before anything else compiles the kernels
        except Exception as exc:
            print(f"  FAIL  first GPU call raised {type(exc).__name__}: {exc}\n")
            failures += 1
    failures += self_check(env)
    if not args.no_timing:
        cpu_timings(args.quick)
        if gpu:
            try:
                gpu_timings(env, args.quick)
            except Exception as exc:
                print(f"  FAIL  GPU timings raised {type(exc).__name__}: {exc}\n")
                failures += 1
    verdict = "FAIL" if failures else "PASS"
    print(f"{verdict}: {failures} failed check(s); {time.perf_counter() - t_start:.1f} s in all")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
