"""Hypothesis fuzzing.

(1) Overflow: arrays drawn near the dtype's limits (+-finfo.max, tiny,
    subnormals, around the exp overflow threshold), with +-inf, NaN and huge
    spreads, random shapes (empty ones too) and axes (tuples too), against scipy
    in float64.  RuntimeWarning is an error (conftest), so none may escape.
(2) Merge-order invariance: random chunkings of an axis and random merge
    orders/trees of the partial states agree with the one-shot result, and with
    each other to a few ulps.

The backend comes from the session-scoped ``xp`` fixture (parametrisation only);
the NumPy path's block size is drawn too, so block merges are exercised.
"""

import math

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cupy_softmax as cs
from _helpers import (
    BFLOAT16,
    MERGE_ORDERS,
    ULPS_BASE,
    ULPS_PER_MERGE,
    asnumpy,
    assert_close,
    chunk,
    dtype_of,
    dtype_params,
    eps_for,
    finfo,
    is_bf16,
    logsumexp_dtype,
    lse_condition,
    merge_in_order,
    ref_logsumexp,
    ref_softmax,
    softmax_dtype,
    state_dtype,
    tile_elements,
    to_xp,
)

TILES = st.sampled_from([None, 1, 3, 7, 64])


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

def _draw_dtype(dtype):
    """(dtype hypothesis draws in, width): bfloat16 is drawn as float32 and cast."""
    dtype = np.dtype(dtype)
    if is_bf16(dtype):
        return np.dtype(np.float32), 32
    return dtype, dtype.itemsize * 8


def float_elements(dtype):
    """Values of every scale the dtype has, weighted towards the hard ones."""
    info = finfo(dtype)
    draw_dtype, width = _draw_dtype(dtype)
    big = float(info.max)
    tiny = float(info.tiny)
    sub = float(getattr(info, "smallest_subnormal", tiny * float(info.eps)))
    # the float32 container must hold the bfloat16 limits exactly: cast them
    if is_bf16(dtype):
        big = float(np.float32(big))
    lexp = math.log(big)  # exp overflows beyond this
    specials = [0.0, -0.0, 1.0, -1.0, big, -big, big / 2, -big / 2, tiny, -tiny, sub, -sub,
                math.inf, -math.inf, math.nan, lexp, -lexp]
    rnd = lambda v: float(np.asarray(v, draw_dtype))  # noqa: E731  (exact in the drawn type)
    specials = [rnd(v) for v in specials]
    fl = lambda lo, hi: st.floats(rnd(lo), rnd(hi), width=width)  # noqa: E731  (subnormals where in range)
    return st.one_of(
        st.sampled_from(specials),
        fl(-30, 30),                                      # ordinary values, exps overlap
        fl(big * 0.5, big), fl(-big, -big * 0.5),         # near +-finfo.max
        fl(-4 * tiny, 4 * tiny),                          # subnormals and tiny
        fl(lexp - 3, lexp + 3), fl(-lexp - 3, -lexp + 3),  # around exp's overflow / underflow
        st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True),  # anything
    )


def arrays_of(dtype, shape):
    draw_dtype, _ = _draw_dtype(dtype)
    strat = hnp.arrays(draw_dtype, shape, elements=float_elements(dtype))
    if is_bf16(dtype):
        strat = strat.map(lambda a: a.astype(BFLOAT16))
    return strat


@st.composite
def axes_for(draw, ndim):
    """None, an int (negative too) or a tuple of distinct axes in any order."""
    if ndim == 0:
        return draw(st.sampled_from([None, 0, -1]))
    return draw(st.one_of(
        st.none(),
        st.integers(-ndim, ndim - 1),
        hnp.valid_tuple_axes(ndim, min_size=1).flatmap(lambda t: st.permutations(t).map(tuple)),
    ))


SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


@st.composite
def softmax_cases(draw, dtype):
    shape = draw(SHAPES)
    x = draw(arrays_of(dtype, shape))
    axis = draw(axes_for(len(shape)))
    return x, axis


# Finite weights: with an infinite weight the float64 reference itself is unreliable
# (scipy computes inf * exp(-1e308) as inf * 0 = NaN); inf/NaN weights are unit-tested
# in test_special.py.  NaN weights do come in, rarely.
# Weights of 1e-3 and more in magnitude (or 0): with weights near the smallest subnormals
# every product b exp(a - max) underflows in the result dtype and the sum keeps a bit or
# two, as in scipy (logsumexp([0, 1], b=float32(1e-45)) is -102.28 there too, against
# -101.97 exactly), which a float64 reference does not model.
WEIGHTS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-3, 1e3, -7.0]),
    st.floats(-4, 4).filter(lambda w: w == 0 or abs(w) >= 1e-3),
)


@st.composite
def logsumexp_cases(draw, dtype):
    with_b = draw(st.booleans())
    if with_b:
        shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0,
                                                        max_side=5))
        a_shape, b_shape = shapes.input_shapes
        full_ndim = len(shapes.result_shape)
        b_dtype = draw(st.sampled_from([np.dtype(dtype), np.dtype(np.float64), np.dtype(np.float32)]))
        # inf/NaN weights rarely: they dominate whatever they touch
        elements = WEIGHTS | st.just(math.nan) if draw(st.integers(0, 4)) == 0 else WEIGHTS
        b = draw(hnp.arrays(np.float64, b_shape, elements=elements))
        b = b.astype(b_dtype) if not is_bf16(b_dtype) else b.astype(BFLOAT16)
    else:
        a_shape = draw(SHAPES)
        full_ndim = len(a_shape)
        b = None
    a = draw(arrays_of(dtype, a_shape))
    # scipy reduces a 0-d (broadcast) input as a 1-d one
    axis = draw(axes_for(full_ndim))
    keepdims = draw(st.booleans())
    return_sign = draw(st.booleans())
    return a, b, axis, keepdims, return_sign


# ---------------------------------------------------------------------------
# (1) Overflow and special values against scipy in float64
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_fuzz_softmax(xp, dtype_name, log):
    dtype = dtype_of(dtype_name)
    fn = cs.log_softmax if log else cs.softmax

    @given(case=softmax_cases(dtype), tiles=TILES)
    def check(case, tiles):
        x, axis = case
        note(f"x={x!r} axis={axis!r} tiles={tiles}")
        with tile_elements(tiles):
            out = fn(to_xp(xp, x), axis=axis)
        assert np.dtype(out.dtype) == softmax_dtype(dtype)
        assert tuple(out.shape) == x.shape
        assert_close(out, ref_softmax(x, axis, log), dtype, "log" if log else "prob")

    check()


@pytest.mark.parametrize("dtype_name", dtype_params())
def test_fuzz_logsumexp(xp, dtype_name):
    dtype = dtype_of(dtype_name)

    @given(case=logsumexp_cases(dtype), tiles=TILES)
    def check(case, tiles):
        a, b, axis, keepdims, return_sign = case
        note(f"a={a!r} b={b!r} axis={axis!r} keepdims={keepdims} return_sign={return_sign} tiles={tiles}")
        with tile_elements(tiles):
            out = cs.logsumexp(to_xp(xp, a), axis=axis, b=None if b is None else to_xp(xp, b),
                               keepdims=keepdims, return_sign=return_sign)
        rdtype = logsumexp_dtype(a, b)
        ref = ref_logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
        cond = None if b is None else lse_condition(a, axis=axis, b=b, keepdims=keepdims)
        if return_sign:
            res, sgn = out
            assert np.dtype(res.dtype) == rdtype and np.dtype(sgn.dtype) == rdtype
            assert tuple(res.shape) == np.shape(ref[0]) == tuple(sgn.shape)
            assert_close(res, ref[0], rdtype, cond=cond)
            assert_close(sgn, ref[1], rdtype, "sign", cond=cond)
        else:
            assert np.dtype(out.dtype) == rdtype
            assert tuple(out.shape) == np.shape(ref)
            assert_close(out, ref, rdtype, cond=cond)

    check()


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
def test_fuzz_complex_logsumexp(xp, dtype_name):
    dtype = np.dtype(dtype_name)
    real = np.zeros(0, dtype).real.dtype

    @st.composite
    def cases(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
        re = draw(arrays_of(real, shape))
        im = draw(hnp.arrays(real, shape, elements=st.floats(-50, 50, width=real.itemsize * 8)))
        return (re + 1j * im).astype(dtype), draw(axes_for(len(shape))), draw(st.booleans())

    @given(case=cases(), tiles=TILES)
    def check(case, tiles):
        z, axis, return_sign = case
        note(f"z={z!r} axis={axis!r} return_sign={return_sign}")
        # where the real parts reach the type's max, the complex sum itself overflows
        # differently in different (all valid) evaluation orders: keep to finite sums
        finite_re = z.real[np.isfinite(z.real)]
        assume(np.all(np.abs(finite_re) < float(finfo(real).max) / 8))
        # a +inf or NaN real part shifts by 0 (scipy's rule: the plain sum of exp), so finite
        # terms must not overflow in the input's precision (which the complex128 reference
        # has not) nor in the reference's (whose |NaN + inf j| is inf, not NaN)
        if np.isposinf(z.real).any() or np.isnan(z.real).any():
            assume(np.all(finite_re < np.log(float(finfo(real).max)) - np.log(z.size) - 1))
        with tile_elements(tiles):
            out = cs.logsumexp(to_xp(xp, z), axis=axis, return_sign=return_sign)
        ref = ref_logsumexp(z, axis=axis, return_sign=return_sign)
        # A NaN real part makes the slice NaN (the library's rule, as for real input); scipy's
        # complex return_sign path can report |NaN + inf j| = inf there instead.
        nan_slice = np.isnan(z.real).any(axis=axis) if z.size else np.zeros((), bool)
        if return_sign and nan_slice.any():
            ref = tuple(np.where(nan_slice, np.nan, r)[()] for r in ref)
        cond = lse_condition(z, axis=axis, b=np.ones(z.shape, np.complex128))
        if return_sign:
            assert_close(out[0], ref[0], dtype, cond=cond)
            assert_close(out[1], ref[1], dtype, "sign", cond=cond)
        else:
            assert_close(out, ref, dtype, cond=cond)

    check()


# ---------------------------------------------------------------------------
# (2) Merge-order invariance
# ---------------------------------------------------------------------------

@st.composite
def chunked_cases(draw, dtype):
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape = list(draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=4)))
    n = draw(st.integers(0, 40))
    shape[axis] = n
    x = draw(arrays_of(dtype, tuple(shape)))
    cuts = draw(st.lists(st.integers(0, n), min_size=0, max_size=7))
    bounds = [0, *sorted(cuts), n]
    orders = draw(st.lists(st.sampled_from(MERGE_ORDERS), min_size=2, max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    return x, axis, bounds, orders, seed


def assert_few_ulps(a, b, dtype, depth, kind, what):
    """Two of our results from different merge schedules: the same NaN and inf
    pattern, and finite values a few ulps (of ``dtype``) apart."""
    a, b = asnumpy(a).astype(np.float64), asnumpy(b).astype(np.float64)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN pattern depends on merge order"
    ulps = ULPS_BASE + ULPS_PER_MERGE * depth
    eps = eps_for(dtype)
    big = float(finfo(dtype).max)
    inf = np.isinf(a) | np.isinf(b)
    # an infinity on one side only is allowed at the edge of the range (rounding there)
    same_inf = (a == b) | (np.sign(a) == np.sign(b)) & (np.minimum(np.abs(a), np.abs(b)) >= big * (1 - ulps * eps))
    bad = inf & ~same_inf
    assert not bad.any(), f"{what}: infinities depend on merge order: {a[bad][:5]} vs {b[bad][:5]}"
    fin = np.isfinite(a) & np.isfinite(b)
    scale = np.abs(b) if kind == "prob" else np.abs(b) + 1
    sub = float(getattr(finfo(dtype), "smallest_subnormal", 0.0))
    tol = ulps * eps * scale + 4 * sub
    with np.errstate(all="ignore"):
        bad = fin & ~(np.abs(a - b) <= tol)
    assert not bad.any(), f"{what}: {a[bad][:5]} vs {b[bad][:5]} differ by more than {ulps} ulps"


@pytest.mark.parametrize("dtype_name", dtype_params())
def test_fuzz_merge_order_invariance(xp, dtype_name):
    dtype = dtype_of(dtype_name)
    sdt = state_dtype(logsumexp_dtype(np.zeros(0, dtype)))

    @given(case=chunked_cases(dtype), tiles=TILES)
    def check(case, tiles):
        x_np, axis, bounds, orders, seed = case
        note(f"x={x_np!r} axis={axis} bounds={bounds} orders={orders} seed={seed}")
        x = to_xp(xp, x_np)
        with tile_elements(tiles):
            pieces = chunk(xp, x, axis, bounds)
            parts = [cs.partial_state(p, axis=axis) for p in pieces]
            rng = np.random.default_rng(seed)
            merged = [merge_in_order(cs, parts, how, rng) for how in orders]
            lses = [cs.state_logsumexp(m) for m in merged]
            softs = [xp.concatenate([cs.softmax_from_state(p, m, axis=axis) for p in pieces], axis=axis)
                     for m in merged]
            logs = [xp.concatenate([cs.log_softmax_from_state(p, m, axis=axis) for p in pieces], axis=axis)
                    for m in merged]
        depth = len(parts)
        ref_lse = ref_logsumexp(x_np, axis=axis)
        for i, (m, lse, sm, ls) in enumerate(zip(merged, lses, softs, logs)):
            # the max is exact: identical in every schedule
            assert np.array_equal(asnumpy(m.max), asnumpy(merged[0].max), equal_nan=True), \
                "max depends on merge order"
            assert np.dtype(m.sum.dtype) == sdt
            # agrees with the one-shot result ...
            assert_close(lse, ref_lse, sdt, what=f"state_logsumexp ({orders[i]})")
            assert_close(sm, ref_softmax(x_np, axis), dtype, "prob", what=f"softmax_from_state ({orders[i]})")
            assert_close(ls, ref_softmax(x_np, axis, True), dtype, "log",
                         what=f"log_softmax_from_state ({orders[i]})")
            # ... and with the other schedules, to a few ulps
            assert_few_ulps(lse, lses[0], sdt, depth, "log", "state_logsumexp")
            assert_few_ulps(sm, softs[0], softmax_dtype(dtype), depth, "prob", "softmax_from_state")
            assert_few_ulps(ls, logs[0], softmax_dtype(dtype), depth, "log", "log_softmax_from_state")
        # and with the one-shot logsumexp, where it computes in the same type
        if sdt == logsumexp_dtype(x_np):
            with tile_elements(tiles):
                one_shot = cs.logsumexp(x, axis=axis)
            assert_few_ulps(lses[0], one_shot, sdt, depth + 2, "log", "logsumexp vs merged states")

    check()
