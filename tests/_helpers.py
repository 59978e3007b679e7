"""Shared helpers of the test suite: backends, references, tolerances, comparisons.

Kept in a plain module (not in conftest.py) so that test modules can import them;
conftest.py builds the fixtures on top of these.
"""

import contextlib
import math
import warnings

import numpy as np
import pytest
import scipy.special as sps

try:
    import ml_dtypes
except ImportError:  # bfloat16 cases skip
    ml_dtypes = None

BFLOAT16 = None if ml_dtypes is None else np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------

def _detect_cupy():
    """(cupy module or None, reason to skip), decided once per session."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"cupy not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"no usable GPU ({type(exc).__name__}: {exc})"
    if count < 1:
        return None, "no GPU"
    return cupy, None


CUPY, CUPY_SKIP_REASON = _detect_cupy()


def is_cupy(xp):
    return CUPY is not None and xp is CUPY


def to_xp(xp, x):
    """A NumPy array (or array-like) on the backend ``xp``."""
    if xp is np:
        return np.asarray(x)
    return xp.asarray(np.asarray(x))


def asnumpy(r):
    """Back to NumPy: CuPy arrays are copied to the host; tuples element-wise."""
    if isinstance(r, tuple):
        return tuple(asnumpy(v) for v in r)
    if CUPY is not None and isinstance(r, CUPY.ndarray):
        return r.get()
    return np.asarray(r)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

FLOAT_NAMES = ["float16", "float32", "float64", "bfloat16"]
COMPLEX_NAMES = ["complex64", "complex128"]

_SKIP_BF16 = pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes (bfloat16) not installed")


def dtype_params(names=FLOAT_NAMES):
    """pytest params of dtype names; bfloat16 skips without ml_dtypes."""
    return [pytest.param(n, marks=_SKIP_BF16, id=n) if n == "bfloat16" else pytest.param(n, id=n)
            for n in names]


def dtype_of(name):
    if name == "bfloat16":
        if BFLOAT16 is None:
            pytest.skip("ml_dtypes (bfloat16) not installed")
        return BFLOAT16
    return np.dtype(name)


def is_bf16(dtype):
    return BFLOAT16 is not None and np.dtype(dtype) == BFLOAT16


def finfo(dtype):
    dtype = np.dtype(dtype)
    if is_bf16(dtype):
        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def softmax_dtype(dtype):
    """Result dtype of softmax/log_softmax: NumPy's rule for ``exp`` (int8 -> float16)."""
    dtype = np.dtype(dtype)
    if is_bf16(dtype):
        return dtype
    return np.exp(np.zeros(0, dtype)).dtype


def logsumexp_dtype(a, b=None):
    """``result_type(a, b, 1.0)`` with Python scalars weak.

    bfloat16 is mapped by hand: ml_dtypes takes no part in NumPy's weak scalar
    promotion (``np.result_type(bfloat16, 1.0)`` says float64, and bfloat16 with
    float64 and 1.0 fails).  bfloat16 promotes as float16 does (a Python float
    keeps it; float32/float64 win), and bfloat16 with float16 gives float32.
    """
    def key(v):
        if v is None or isinstance(v, (bool, int, float, complex)):
            return v
        return np.asarray(v).dtype if not hasattr(v, "dtype") else np.dtype(v.dtype)
    keys = [key(v) for v in (a, b) if v is not None]
    bf = [k for k in keys if isinstance(k, np.dtype) and is_bf16(k)]
    if not bf:
        return np.result_type(*keys, 1.0)
    as_half = [np.dtype(np.float16) if (isinstance(k, np.dtype) and is_bf16(k)) else k for k in keys]
    result = np.result_type(*as_half, 1.0)
    if result != np.float16:
        return result
    if any(isinstance(k, np.dtype) and k == np.float16 for k in keys):
        return np.dtype(np.float32)
    return BFLOAT16


def state_dtype(dtype):
    """dtype of a partial state's ``sum``: float32 for the 16-bit floats."""
    dtype = np.dtype(dtype)
    if dtype == np.float16 or is_bf16(dtype):
        return np.dtype(np.float32)
    return dtype


def real_dtype(dtype):
    return np.zeros(0, dtype).real.dtype


# ---------------------------------------------------------------------------
# Tolerances: the one place they are stated.
#
# RTOL is the relative error allowed against a float64 reference, per result dtype.
# The computation's own error is a few ulps from the blocked sum and the final
# rounding, plus the rounding of x - max amplified by exp (a relative error of
# about eps * |x - max|, at most ~100 eps in float32 before exp underflows, ~700 eps
# in float64; `assert_close` adds that term explicitly for probabilities).  The
# values are a few hundred ulps of each type:
#   float64  1e-12  (eps 2.2e-16: ~4500 ulp, also covers scipy's own error in the reference)
#   float32  1e-5   (eps 1.2e-7: ~80 ulp)
#   float16  2e-3   (eps 9.8e-4: computed in float32, so only the final rounding, 0.5 ulp, plus slack)
#   bfloat16 2e-2   (eps 7.8e-3: idem)
# Complex results use the tolerance of their real type.
# ---------------------------------------------------------------------------

RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}

# Merge-order invariance ("a few ulps"): results of different chunkings and merge
# trees agree to ULPS_PER_MERGE ulps per merge level, plus a few for the finaliser.
ULPS_BASE = 8
ULPS_PER_MERGE = 2


def rtol_for(dtype):
    dtype = np.dtype(dtype)
    name = "bfloat16" if is_bf16(dtype) else real_dtype(dtype).name
    return RTOL[name]


def eps_for(dtype):
    return float(finfo(real_dtype(dtype) if not is_bf16(dtype) else dtype).eps)


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    """For computing references only: scipy warns on inf/NaN input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


def upcast(x):
    """float64 (complex128) NumPy copy of a NumPy input, the reference's input."""
    if x is None or isinstance(x, (bool, int, float, complex)):
        return x
    x = np.asarray(x)
    if x.dtype.kind == "c":
        return x.astype(np.complex128)
    return x.astype(np.float64)


def ref_softmax(x, axis=None, log=False):
    """float64 scipy reference; empty input gives an empty result (scipy raises)."""
    x64 = upcast(x)
    x64 = np.asarray(x64) if not isinstance(x64, (bool, int, float, complex)) else x64
    if np.size(x64) == 0:
        return np.empty(np.shape(x64))
    with quiet():
        return (sps.log_softmax if log else sps.softmax)(x64, axis=axis)


def _reduced_shape(shape, axis, keepdims):
    shape = tuple(shape)
    if len(shape) == 0:  # scipy treats 0-d as 1-d
        shape = (1,)
    return np.sum(np.zeros(shape), axis=axis, keepdims=keepdims).shape


def ref_logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """float64 scipy reference.

    Empty reductions: -inf with sign 0 (an empty sum is 0; scipy says -1, a
    documented deviation), also where scipy crashes (keepdims over an empty array).
    """
    a64, b64 = upcast(a), upcast(b)
    shape = np.broadcast_shapes(np.shape(a64), np.shape(b64) if b is not None else ())
    if b is not None:
        # b == 0 masks its element.  scipy does too, except that a slice with every
        # element masked and an inf/NaN among them comes out NaN from scipy's
        # fallback path (sum(b * exp(a)) = 0 * inf); the right answer is -inf (sign 0),
        # so the reference masks first.
        a64, b64 = np.broadcast_arrays(np.asarray(a64), np.asarray(b64))
        a64 = np.where(b64 == 0, -np.inf, a64)
    if math.prod(shape) == 0:
        rshape = _reduced_shape(shape, axis, keepdims)
        is_c = np.asarray(a64).dtype.kind == "c" or (b is not None and np.asarray(b64).dtype.kind == "c")
        out = np.full(rshape, -np.inf, np.complex128 if (is_c and not return_sign) else np.float64)
        sgn = np.zeros(rshape, np.complex128 if is_c else np.float64)
        out, sgn = out[()], sgn[()]
        return (out, sgn) if return_sign else out
    is_c = np.asarray(a64).dtype.kind == "c" or (b is not None and np.asarray(b64).dtype.kind == "c")
    with quiet():
        if return_sign or is_c:
            return sps.logsumexp(a64, axis=axis, b=b64, keepdims=keepdims, return_sign=return_sign)
        # Without return_sign scipy replaces its NaN for a negative sum by log(sum(b * exp(a)))
        # computed directly, which is -inf where that sum underflows to -0.0 (a = -1e308,
        # b = -1): the right answer is NaN, i.e. the signed result with NaN where negative.
        out, sgn = sps.logsumexp(a64, axis=axis, b=b64, keepdims=keepdims, return_sign=True)
        return np.asarray(np.where(sgn < 0, np.nan, out))[()]


def lse_condition(a, axis=None, b=None, keepdims=False):
    """Condition number of log|sum b exp(a)|: sum|b exp(a)| / |sum b exp(a)| (float64).

    1 without weights or with non-negative real weights; large where terms cancel.
    inf where the sum cancels to exactly zero; 1 where every term is masked.
    """
    a64, b64 = upcast(a), upcast(b)
    a64 = np.asarray(a64)
    full = np.broadcast_shapes(a64.shape, np.shape(b64) if b is not None else ())
    if b is None or math.prod(full) == 0 or (np.isrealobj(b64) and np.all(np.asarray(b64) >= 0) and a64.dtype.kind != "c"):
        return np.ones(_reduced_shape(np.broadcast_shapes(np.shape(a64), np.shape(b64) if b is not None else ()), axis, keepdims))
    with quiet():
        babs = np.abs(np.asarray(b64, dtype=np.complex128 if np.iscomplexobj(b64) else np.float64))
        lse_abs = sps.logsumexp(np.real(a64), axis=axis, b=babs, keepdims=keepdims)
        lse_signed = np.real(sps.logsumexp(a64, axis=axis, b=b64, keepdims=keepdims, return_sign=True)[0])
        lse_abs = np.asarray(lse_abs, float)
        lse_signed = np.asarray(lse_signed, float)
        cond = np.exp(lse_abs - lse_signed)
        # only a finite sum that cancels (partly or to exactly 0) is ill-conditioned;
        # inf/NaN/fully masked results are compared as they are
        finite = np.isfinite(lse_abs)
        cond = np.where(finite, cond, 1.0)
        cond = np.where(finite & np.isneginf(lse_signed), np.inf, cond)
    return cond


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------

def assert_type_like(ours, expected, xp):
    """``ours`` has scipy's kind of result: same type (NumPy scalar vs ndarray),
    dtype and shape.  On CuPy every result is a cupy.ndarray (0-d for scalars)."""
    exp_dtype = np.dtype(expected.dtype)
    if is_cupy(xp):
        assert isinstance(ours, CUPY.ndarray), type(ours)
    else:
        assert type(ours) is type(expected), (type(ours), type(expected))
    assert np.dtype(ours.dtype) == exp_dtype, (ours.dtype, exp_dtype)
    assert ours.shape == np.shape(expected), (ours.shape, np.shape(expected))


def assert_result_kind(ours, xp, dtype, shape, scalar):
    """Like assert_type_like, for a result described by dtype/shape/scalar-ness."""
    dtype = np.dtype(dtype)
    if is_cupy(xp):
        assert isinstance(ours, CUPY.ndarray), type(ours)
    elif scalar:
        assert isinstance(ours, np.generic) and not isinstance(ours, np.ndarray), type(ours)
        assert type(ours) is dtype.type, (type(ours), dtype.type)
    else:
        assert type(ours) is np.ndarray, type(ours)
    assert np.dtype(ours.dtype) == dtype, (ours.dtype, dtype)
    assert tuple(ours.shape) == tuple(shape), (ours.shape, shape)


def _check_real(a, r, dtype, kind, cond, what):
    """a: our result as float64, r: float64 reference; both real arrays."""
    assert a.shape == r.shape, (what, a.shape, r.shape)
    rtol = rtol_for(dtype)
    info = finfo(dtype if not np.dtype(dtype).kind == "c" else real_dtype(dtype))
    big = float(info.max)
    tiny_sub = float(getattr(info, "smallest_subnormal", 0.0) or info.tiny * info.eps)
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    bad = nan_a != nan_r
    assert not bad.any(), _report(what, "NaN pattern differs", a, r, bad)
    # Where the reference is +-inf for real (it is computed in float64 from
    # values of a narrower type, so that means a true infinity), ours must be too.
    # In float64 itself the reference may have overflowed: accept a result at the top
    # of the range there.
    inf_r = np.isinf(r)
    if np.dtype(dtype) == np.float64 or real_dtype(dtype) == np.float64:
        ok_inf = (a == r) | (np.sign(a) == np.sign(r)) & (np.abs(a) >= big * (1 - rtol))
    else:
        ok_inf = a == r
    bad = inf_r & ~ok_inf
    assert not bad.any(), _report(what, "infinity differs", a, r, bad)
    # Finite references: compare inside the type's range (a finite reference beyond
    # finfo.max rounds to inf in the result type, and vice versa near the edge).
    fin = ~inf_r & ~nan_r
    with np.errstate(all="ignore"):
        ac = np.clip(a, -big, big)
        rc = np.clip(r, -big, big)
        err = np.abs(ac - rc)
        if kind == "prob":
            # values in [0, 1]; exp turns the rounding of x - max into a relative
            # error ~ eps * |x - max| ~ eps * |log p|, and subnormal results carry an
            # absolute error of a few of the type's smallest subnormals.
            logp = np.abs(np.log(np.where(rc > 0, rc, 1.0)))
            tol = rtol * np.abs(rc) * (1 + logp / 32) + 4 * tiny_sub
        else:
            # log values: absolute error ~ eps * (|x| + |max| + log n), so a relative
            # tolerance on max(|ref|, 1); cancellation under signed weights adds cond.
            tol = rtol * (np.abs(rc) + 1)
            if cond is not None:
                tol = tol + rtol * np.broadcast_to(cond, tol.shape)
        bad = fin & ~(err <= tol)
    assert not bad.any(), _report(what, f"outside tolerance (rtol={rtol:g})", a, r, bad)


def _report(what, msg, a, r, bad):
    idx = np.argwhere(np.atleast_1d(bad))[:5]
    af, rf = np.atleast_1d(a), np.atleast_1d(r)
    rows = ", ".join(f"{tuple(i)}: got {af[tuple(i)]!r} want {rf[tuple(i)]!r}" for i in idx)
    return f"{what}: {msg} at {int(np.sum(bad))} of {np.size(bad)} elements; {rows}"


def assert_close(actual, ref, dtype, kind="log", cond=None, what="result"):
    """Compare our result (any backend) with a float64/complex128 reference.

    kind: "prob" for softmax outputs, "log" for log_softmax/logsumexp outputs,
    "sign" for the sign output of logsumexp (exact for real, unit complex otherwise).
    cond: condition numbers (see lse_condition); elements with cond * eps > 1e-2 are
    too ill-conditioned to compare and are skipped.
    """
    a = asnumpy(actual)
    r = np.asarray(ref)
    a = np.asarray(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64))
    r = np.asarray(r.astype(np.complex128 if r.dtype.kind == "c" else np.float64))
    assert a.shape == r.shape, (what, a.shape, r.shape)
    if cond is not None:
        cond = np.broadcast_to(np.asarray(cond, float), r.shape)
        usable = cond * eps_for(dtype) <= 1e-2
        if not usable.all():
            a = np.where(usable, a, 0)
            r = np.where(usable, r, 0)
            cond = np.where(usable, cond, 1)
    if kind == "sign":
        if r.dtype.kind == "c" or a.dtype.kind == "c":
            a_c, r_c = a.astype(np.complex128), r.astype(np.complex128)
            nan_a, nan_r = np.isnan(a_c), np.isnan(r_c)
            assert np.array_equal(nan_a, nan_r), _report(what, "NaN pattern differs", a_c, r_c, nan_a != nan_r)
            ok = nan_r | (np.abs(a_c - r_c) <= 2 * rtol_for(dtype) * (1 + (0 if cond is None else cond)))
            assert ok.all(), _report(what, "complex sign differs", a_c, r_c, ~ok)
        else:
            ok = (a == r) | (np.isnan(a) & np.isnan(r))
            assert ok.all(), _report(what, "sign differs", a, r, ~ok)
        return
    if r.dtype.kind == "c" or a.dtype.kind == "c":
        a_c, r_c = a.astype(np.complex128), r.astype(np.complex128)
        # NaN anywhere in a complex value: both must have one (scipy gives nan+nanj).
        nan_a, nan_r = np.isnan(a_c), np.isnan(r_c)
        assert np.array_equal(nan_a, nan_r), _report(what, "NaN pattern differs", a_c, r_c, nan_a != nan_r)
        ok_mask = ~nan_r
        _check_real(np.where(ok_mask, a_c.real, 0), np.where(ok_mask, r_c.real, 0), dtype, kind, cond,
                    what + " (real part)")
        # imaginary part: the principal branch, (-pi, pi], compared as angles
        ai, ri = a_c.imag, r_c.imag
        pi_t = float(np.asarray(np.pi, real_dtype(dtype)))
        fin = ok_mask & np.isfinite(ai) & np.isfinite(ri) & np.isfinite(r_c.real)
        # scipy's convention in floating point: (-pi, pi] with pi = the type's nearest
        # value, i.e. -pi itself wraps to +pi
        in_range = ~fin | ((ai > -pi_t) & (ai <= pi_t))
        assert in_range.all(), _report(what, "imaginary part outside (-pi, pi]", ai, ri, ~in_range)
        d = np.abs(np.remainder(ai - ri + np.pi, 2 * np.pi) - np.pi)
        tol = rtol_for(dtype) * (4 + (0 if cond is None else cond))
        bad = fin & ~(d <= tol)
        assert not bad.any(), _report(what + " (imaginary part)", "outside tolerance", ai, ri, bad)
        return
    _check_real(a, r, dtype, kind, cond, what)


# ---------------------------------------------------------------------------
# Library knobs
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def tile_elements(n):
    """Temporarily set the NumPy path's block size (None: leave the default)."""
    from cupy_softmax import _numpy_backend
    if n is None:
        yield
        return
    old = _numpy_backend.TILE_ELEMENTS
    _numpy_backend.TILE_ELEMENTS = n
    try:
        yield
    finally:
        _numpy_backend.TILE_ELEMENTS = old


def same_bytes(a, b):
    """Exactly equal arrays (NaNs included): same shape, dtype and bytes."""
    a, b = asnumpy(a), asnumpy(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


# ---------------------------------------------------------------------------
# Chunking and merge trees, for the streaming API
# ---------------------------------------------------------------------------

def chunk(xp, x, axis, bounds):
    """Pieces of ``x`` along ``axis`` between consecutive ``bounds`` (empty pieces allowed)."""
    index = [slice(None)] * x.ndim
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index[axis] = slice(lo, hi)
        pieces.append(x[tuple(index)])
    return pieces


def merge_in_order(cs, states, how, rng=None):
    """Merge a list of states by one of several schedules.

    how: "all" (one merge_states call), "left" (fold from the left), "right",
    "balanced" (pairwise tree), "random" (random pairs of the pool, any order),
    "groups" (random multi-way merges), "reversed" (all at once, reversed list).
    """
    states = list(states)
    if how == "all":
        return cs.merge_states(*states)
    if how == "reversed":
        return cs.merge_states(*states[::-1])
    if how == "left":
        acc = states[0]
        for s in states[1:]:
            acc = cs.merge_states(acc, s)
        return acc
    if how == "right":
        acc = states[-1]
        for s in states[-2::-1]:
            acc = cs.merge_states(s, acc)
        return acc
    if how == "balanced":
        while len(states) > 1:
            nxt = [cs.merge_states(states[i], states[i + 1]) for i in range(0, len(states) - 1, 2)]
            if len(states) % 2:
                nxt.append(states[-1])
            states = nxt
        return cs.merge_states(states[0])
    if how in ("random", "groups"):
        rng = rng if rng is not None else np.random.default_rng(0)
        while len(states) > 1:
            k = 2 if how == "random" else int(rng.integers(2, len(states) + 1))
            pick = sorted(rng.choice(len(states), size=k, replace=False).tolist())
            merged = cs.merge_states(*(states[i] for i in rng.permutation(pick)))
            states = [s for i, s in enumerate(states) if i not in pick] + [merged]
        return states[0]
    raise ValueError(how)


MERGE_ORDERS = ["all", "reversed", "left", "right", "balanced", "random", "groups"]
