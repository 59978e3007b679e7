"""The streaming state API: partial states of chunks, merges, finalisers.

States of the chunks of an axis, merged in any order or tree, give the
one-shot logsumexp; each chunk normalised against the final state, put back
together, gives the one-shot softmax / log_softmax.
"""

import numpy as np
import pytest

import cupy_softmax as cs
from _helpers import (
    MERGE_ORDERS,
    asnumpy,
    assert_close,
    chunk,
    dtype_of,
    dtype_params,
    is_cupy,
    logsumexp_dtype,
    lse_condition,
    merge_in_order,
    real_dtype,
    ref_logsumexp,
    ref_softmax,
    same_bytes,
    softmax_dtype,
    state_dtype,
    to_xp,
)

# (shape, axis, chunk bounds along that axis): empty chunks included
CASES = [
    ((4, 37), -1, [0, 0, 5, 6, 20, 20, 37]),
    ((4, 37), 1, [0, 37]),
    ((37, 5), 0, [0, 1, 2, 3, 30, 37, 37]),
    ((3, 10, 4), 1, [0, 4, 4, 9, 10]),
    ((2, 3, 4, 9), 3, [0, 2, 4, 6, 8, 9]),
    ((23,), 0, [0, 11, 12, 23]),
    ((2, 3, 5), -3, [0, 1, 2]),
]
CASE_IDS = [f"{s}-ax{a}-{len(b) - 1}chunks" for s, a, b in CASES]


def data(shape, dtype, seed=0, scale=6.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def concat(xp, pieces, axis):
    return xp.concatenate(pieces, axis=axis)


def check_state(state, xp, expected_shape, expected_sum_dtype):
    assert isinstance(state, cs.SoftmaxState)
    for field in state:
        if is_cupy(xp):
            assert isinstance(field, xp.ndarray)
        else:
            assert isinstance(field, (np.ndarray, np.generic))
        assert tuple(field.shape) == tuple(expected_shape)
    assert np.dtype(state.sum.dtype) == np.dtype(expected_sum_dtype)
    assert np.dtype(state.max.dtype) == real_dtype(expected_sum_dtype)


def test_softmax_state_is_a_namedtuple():
    assert cs.SoftmaxState._fields == ("max", "sum")
    st = cs.SoftmaxState(max=np.zeros(2), sum=np.ones(2))
    m, s = st
    assert m is st.max and s is st.sum


@pytest.mark.parametrize("shape,axis,bounds", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype_name", dtype_params(["float64", "float32", "float16", "bfloat16"]))
@pytest.mark.parametrize("how", MERGE_ORDERS)
def test_merged_states_give_logsumexp(xp, tiles, shape, axis, bounds, dtype_name, how):
    dtype = dtype_of(dtype_name)
    x_np = data(shape, dtype, seed=len(bounds))
    x = to_xp(xp, x_np)
    sdt = state_dtype(logsumexp_dtype(x_np))
    kept = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    parts = [cs.partial_state(piece, axis=axis) for piece in chunk(xp, x, axis, bounds)]
    for p in parts:
        check_state(p, xp, kept, sdt)
    merged = merge_in_order(cs, parts, how, np.random.default_rng(1))
    check_state(merged, xp, kept, sdt)
    lse = cs.state_logsumexp(merged)
    assert np.dtype(lse.dtype) == sdt
    assert_close(lse, ref_logsumexp(x_np, axis=axis), sdt)
    res, sgn = cs.state_logsumexp(merged, return_sign=True)
    assert_close(res, ref_logsumexp(x_np, axis=axis), sdt)
    assert np.all(asnumpy(sgn) == 1)
    # the one-shot state is the merged one, up to rounding
    whole = cs.partial_state(x, axis=axis)
    assert np.array_equal(asnumpy(whole.max), asnumpy(merged.max))
    assert_close(cs.state_logsumexp(whole), ref_logsumexp(x_np, axis=axis), sdt)


@pytest.mark.parametrize("shape,axis,bounds", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype_name", dtype_params(["float64", "float32", "float16", "bfloat16"]))
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_chunks_normalised_against_state(xp, tiles, shape, axis, bounds, dtype_name, log):
    dtype = dtype_of(dtype_name)
    x_np = data(shape, dtype, seed=len(bounds) + 1)
    x = to_xp(xp, x_np)
    pieces = chunk(xp, x, axis, bounds)
    state = merge_in_order(cs, [cs.partial_state(p, axis=axis) for p in pieces], "balanced")
    fn = cs.log_softmax_from_state if log else cs.softmax_from_state
    outs = [fn(p, state, axis=axis) for p in pieces]
    for p, o in zip(pieces, outs):
        assert tuple(o.shape) == tuple(p.shape)
        assert np.dtype(o.dtype) == softmax_dtype(dtype)
    full = concat(xp, outs, axis)
    assert_close(full, ref_softmax(x_np, axis, log), dtype, "log" if log else "prob")
    one_shot = (cs.log_softmax if log else cs.softmax)(x, axis=axis)
    assert_close(full, asnumpy(one_shot).astype(np.float64), dtype, "log" if log else "prob")


@pytest.mark.parametrize("axis,split_axis", [((0, 2), 0), ((0, 2), 2), ((1, 2), 1), (None, 0), ((0, 1, 2), 2)])
def test_tuple_axes(xp, tiles, axis, split_axis):
    x_np = data((6, 5, 7), np.float64, seed=3)
    x = to_xp(xp, x_np)
    n = x_np.shape[split_axis]
    bounds = [0, 2, 2, n]
    pieces = chunk(xp, x, split_axis, bounds)
    parts = [cs.partial_state(p, axis=axis) for p in pieces]
    expected_shape = np.sum(np.zeros(x_np.shape), axis=axis).shape
    for p in parts:
        check_state(p, xp, expected_shape, np.float64)
    state = merge_in_order(cs, parts, "random", np.random.default_rng(5))
    assert_close(cs.state_logsumexp(state), ref_logsumexp(x_np, axis=axis), np.float64)
    for log, fn in ((False, cs.softmax_from_state), (True, cs.log_softmax_from_state)):
        full = concat(xp, [fn(p, state, axis=axis) for p in pieces], split_axis)
        assert_close(full, ref_softmax(x_np, axis, log), np.float64, "log" if log else "prob")


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
def test_empty_chunks(xp, dtype_name):
    dtype = np.dtype(dtype_name)
    sdt = state_dtype(dtype)
    for shape, axis in (((3, 0), 1), ((0, 4), 0), ((2, 0, 3), 1), ((0,), 0)):
        empty = to_xp(xp, np.zeros(shape, dtype))
        st = cs.partial_state(empty, axis=axis)
        kept = tuple(n for i, n in enumerate(shape) if i != axis)
        check_state(st, xp, kept, sdt)
        assert np.all(asnumpy(st.max) == -np.inf)
        assert np.all(asnumpy(st.sum) == 0)
        assert np.all(asnumpy(cs.state_logsumexp(st)) == -np.inf)
        res, sgn = cs.state_logsumexp(st, return_sign=True)
        assert np.all(asnumpy(res) == -np.inf) and np.all(asnumpy(sgn) == 0)
        out = cs.softmax_from_state(empty, st, axis=axis)
        assert tuple(out.shape) == shape and np.dtype(out.dtype) == softmax_dtype(dtype)
        out = cs.log_softmax_from_state(empty, st, axis=axis)
        assert tuple(out.shape) == shape
    # merging the empty state changes nothing, exactly
    x = to_xp(xp, data((3, 8), dtype))
    st = cs.partial_state(x, axis=1)
    e = cs.partial_state(x[:, :0], axis=1)
    for merged in (cs.merge_states(st, e), cs.merge_states(e, st), cs.merge_states(e, st, e, e)):
        assert same_bytes(merged.max, st.max)
        assert same_bytes(merged.sum, st.sum)
    only_empty = cs.merge_states(e, e, e)
    assert np.all(asnumpy(only_empty.max) == -np.inf) and np.all(asnumpy(only_empty.sum) == 0)


@pytest.mark.parametrize("b_kind", ["positive", "signed", "zeros-mask", "broadcast-row"])
@pytest.mark.parametrize("how", ["all", "left", "random"])
def test_weights(xp, tiles, b_kind, how):
    rng = np.random.default_rng(11)
    x_np = data((5, 30), np.float64, seed=12, scale=3)
    if b_kind == "broadcast-row":
        b_np = rng.uniform(-1, 2, (30,))
    else:
        b_np = rng.uniform(0.1, 2, (5, 30))
        if b_kind == "signed":
            b_np *= rng.choice([-1, 1], (5, 30))
            b_np[2, :] = 0
            b_np[2, 3], b_np[2, 20] = 1.5, -1.5
            x_np[2, 3] = x_np[2, 20]  # cancels exactly: -inf, sign 0
        if b_kind == "zeros-mask":
            b_np[:, ::3] = 0
            x_np[:, ::3] = np.inf  # masked: never seen
            x_np[1, 4] = np.nan
            b_np[1, 4] = 0
            b_np[4, :] = 0  # a fully masked row: -inf
    x, b = to_xp(xp, x_np), to_xp(xp, b_np)
    bounds = [0, 7, 7, 15, 29, 30]
    xs = chunk(xp, x, 1, bounds)
    bs = chunk(xp, b, b.ndim - 1, bounds)
    parts = [cs.partial_state(xc, axis=1, b=bc) for xc, bc in zip(xs, bs)]
    state = merge_in_order(cs, parts, how, np.random.default_rng(2))
    cond = lse_condition(x_np, axis=1, b=b_np)
    ref = ref_logsumexp(x_np, axis=1, b=b_np, return_sign=True)
    res, sgn = cs.state_logsumexp(state, return_sign=True)
    assert_close(res, ref[0], np.float64, cond=cond)
    assert_close(sgn, ref[1], np.float64, "sign", cond=cond)
    plain = cs.state_logsumexp(state)
    assert_close(plain, ref_logsumexp(x_np, axis=1, b=b_np), np.float64, cond=cond)
    if b_kind == "signed":
        assert asnumpy(res)[2] == -np.inf and asnumpy(sgn)[2] == 0


def special_matrix():
    inf, nan = np.inf, np.nan
    x = np.random.default_rng(4).standard_normal((8, 12)) * 3
    x[1, :6] = -inf                 # a whole chunk of -inf
    x[2, 7] = inf                   # +inf in one chunk
    x[3, 1] = nan                   # NaN in one chunk
    x[4, :] = -inf                  # every chunk -inf
    x[5, 2], x[5, 9] = inf, -inf
    x[6, 3], x[6, 10] = inf, inf
    x[7, 5], x[7, 11] = nan, inf
    return x


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
@pytest.mark.parametrize("how", MERGE_ORDERS)
def test_inf_nan_chunks(xp, tiles, dtype_name, how):
    dtype = np.dtype(dtype_name)
    x_np = special_matrix().astype(dtype)
    x = to_xp(xp, x_np)
    bounds = [0, 6, 6, 8, 12]
    pieces = chunk(xp, x, 1, bounds)
    state = merge_in_order(cs, [cs.partial_state(p, axis=1) for p in pieces], how, np.random.default_rng(3))
    sdt = state_dtype(dtype)
    assert_close(cs.state_logsumexp(state), ref_logsumexp(x_np, axis=1), sdt)
    res, sgn = cs.state_logsumexp(state, return_sign=True)
    ref = ref_logsumexp(x_np, axis=1, return_sign=True)
    assert_close(res, ref[0], sdt)
    assert_close(sgn, ref[1], sdt, "sign")
    for log, fn in ((False, cs.softmax_from_state), (True, cs.log_softmax_from_state)):
        full = concat(xp, [fn(p, state, axis=1) for p in pieces], 1)
        assert_close(full, ref_softmax(x_np, 1, log), dtype, "log" if log else "prob")


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
@pytest.mark.parametrize("how", ["all", "balanced", "random"])
def test_complex_states(xp, dtype_name, how):
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(21)
    x_np = (rng.standard_normal((4, 20)) * 2 + 1j * rng.uniform(-4, 4, (4, 20))).astype(dtype)
    x_np[1, :5] = complex(-np.inf, 0)
    x = to_xp(xp, x_np)
    pieces = chunk(xp, x, 1, [0, 5, 5, 13, 20])
    parts = [cs.partial_state(p, axis=1) for p in pieces]
    for p in parts:
        check_state(p, xp, (4,), dtype)
    state = merge_in_order(cs, parts, how, np.random.default_rng(0))
    cond = lse_condition(x_np, axis=1, b=np.ones(x_np.shape, np.complex128))
    assert_close(cs.state_logsumexp(state), ref_logsumexp(x_np, axis=1), dtype, cond=cond)
    res, sgn = cs.state_logsumexp(state, return_sign=True)
    ref = ref_logsumexp(x_np, axis=1, return_sign=True)
    assert_close(res, ref[0], dtype, cond=cond)
    assert_close(sgn, ref[1], dtype, "sign", cond=cond)


def test_complex_inf_state_merge(xp):
    """Merging a state whose sum is inf + 0j keeps the imaginary part 0 (not NaN)."""
    x_np = np.array([[np.inf + 0j, 0j, 1j, 0j], [0j, complex(np.inf, 1), 0j, 2 + 0j]])
    x = to_xp(xp, x_np)
    parts = [cs.partial_state(p, axis=1) for p in chunk(xp, x, 1, [0, 1, 2, 4])]
    for how in ("all", "left", "balanced"):
        state = merge_in_order(cs, parts, how)
        assert_close(cs.state_logsumexp(state), ref_logsumexp(x_np, axis=1), np.complex128)


@pytest.mark.parametrize("x_dtype,b,expected", [
    ("float16", None, "float32"), ("bfloat16", None, "float32"), ("float32", None, "float32"),
    ("float64", None, "float64"), ("int8", None, "float64"), ("int16", None, "float64"),
    ("bool", None, "float64"), ("float16", "float64", "float64"), ("float16", "float16", "float32"),
    ("float32", "float64", "float64"), ("complex64", None, "complex64"), ("float64", "complex128", "complex128"),
])
def test_state_dtypes(xp, x_dtype, b, expected):
    dtype = dtype_of(x_dtype)
    x_np = np.array([[1, 0, 1]]).astype(dtype)
    b_np = None if b is None else np.ones((1, 3), b)
    st = cs.partial_state(to_xp(xp, x_np), axis=1, b=None if b_np is None else to_xp(xp, b_np))
    check_state(st, xp, (1,), expected)
    assert_close(cs.state_logsumexp(st), ref_logsumexp(x_np, axis=1, b=b_np), np.dtype(expected))


@pytest.mark.parametrize("x_dtype", ["float16", "float32", "float64", "int8", "int16", "int64", "bool", "uint8"])
def test_from_state_dtype_follows_softmax(xp, x_dtype):
    x_np = (np.arange(6).reshape(2, 3) % 2).astype(x_dtype)
    x = to_xp(xp, x_np)
    state = cs.partial_state(to_xp(xp, x_np.astype(np.float64)), axis=1)  # a float64 state
    for log, fn in ((False, cs.softmax_from_state), (True, cs.log_softmax_from_state)):
        out = fn(x, state, axis=1)
        assert np.dtype(out.dtype) == softmax_dtype(x_np.dtype)
        assert_close(out, ref_softmax(x_np, 1, log), softmax_dtype(x_np.dtype), "log" if log else "prob")


def test_default_axis_is_last(xp):
    x_np = data((3, 4, 5), np.float64)
    x = to_xp(xp, x_np)
    st = cs.partial_state(x)
    assert tuple(st.max.shape) == (3, 4)
    assert_close(cs.state_logsumexp(st), ref_logsumexp(x_np, axis=-1), np.float64)
    assert_close(cs.softmax_from_state(x, st), ref_softmax(x_np, -1), np.float64, "prob")
    assert_close(cs.log_softmax_from_state(x, st), ref_softmax(x_np, -1, True), np.float64)


def test_zero_d_states(xp):
    x_np = data((9,), np.float64)
    x = to_xp(xp, x_np)
    parts = [cs.partial_state(p) for p in chunk(xp, x, 0, [0, 4, 9])]
    for p in parts:
        assert tuple(p.max.shape) == () and tuple(p.sum.shape) == ()
    state = cs.merge_states(*parts)
    assert tuple(state.max.shape) == ()
    out = cs.state_logsumexp(state)
    assert np.shape(out) == ()
    assert_close(out, ref_logsumexp(x_np), np.float64)
    assert_close(cs.softmax_from_state(x, state), ref_softmax(x_np), np.float64, "prob")


def test_single_state_merge_is_identity(xp):
    x = to_xp(xp, data((3, 7), np.float32))
    st = cs.partial_state(x, axis=1)
    one = cs.merge_states(st)
    assert isinstance(one, cs.SoftmaxState)
    assert same_bytes(one.max, st.max) and same_bytes(one.sum, st.sum)


def test_merge_errors(xp):
    with pytest.raises((TypeError, ValueError)):
        cs.merge_states()
    a = cs.partial_state(to_xp(xp, np.ones((3, 4))), axis=1)
    b = cs.partial_state(to_xp(xp, np.ones((4, 4))), axis=1)
    with pytest.raises(ValueError, match="shape"):
        cs.merge_states(a, b)


def test_from_state_shape_mismatch(xp):
    x = to_xp(xp, np.ones((3, 4)))
    wrong = cs.partial_state(to_xp(xp, np.ones((4, 4))), axis=1)
    for fn in (cs.softmax_from_state, cs.log_softmax_from_state):
        with pytest.raises(ValueError, match="shape"):
            fn(x, wrong, axis=1)
    right_for_axis0 = cs.partial_state(x, axis=0)  # shape (4,)
    with pytest.raises(ValueError):
        cs.softmax_from_state(x, right_for_axis0, axis=1)


def test_chunk_normalised_against_own_state_is_softmax(xp, tiles):
    x_np = data((4, 9), np.float32, seed=7)
    x = to_xp(xp, x_np)
    for axis in (0, 1, -1):
        st = cs.partial_state(x, axis=axis)
        assert_close(cs.softmax_from_state(x, st, axis=axis), ref_softmax(x_np, axis), np.float32, "prob")
        assert_close(cs.log_softmax_from_state(x, st, axis=axis), ref_softmax(x_np, axis, True), np.float32)


def test_streaming_views(xp, tiles):
    """Non-contiguous and reversed chunks."""
    x_np = data((12, 10), np.float64, seed=8)
    x = to_xp(xp, x_np)[::-1].T  # (10, 12), negative strides, reduce over axis 1 (the old axis 0)
    ref_x = np.ascontiguousarray(x_np[::-1].T)
    pieces = chunk(xp, x, 1, [0, 3, 8, 12])
    pieces = [p[:, ::-1] for p in pieces]  # reversed within each chunk: same set of values
    state = cs.merge_states(*(cs.partial_state(p, axis=1) for p in pieces))
    assert_close(cs.state_logsumexp(state), ref_logsumexp(ref_x, axis=1), np.float64)
    outs = [cs.softmax_from_state(p, state, axis=1)[:, ::-1] for p in pieces]
    assert_close(concat(xp, outs, 1), ref_softmax(ref_x, 1), np.float64, "prob")
