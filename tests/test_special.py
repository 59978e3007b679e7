"""softmax, log_softmax and logsumexp against scipy.special, edge case by edge case.

Values are compared with scipy run on the input upcast to float64 (complex128),
with the tolerance of our result dtype (see _helpers.RTOL); result types,
dtypes and shapes are compared with scipy's own output on the original input
wherever scipy works.  Every test taking ``xp`` runs on NumPy and on CuPy.
"""

import inspect
import re
import warnings

import numpy as np
import pytest
import scipy.special as sps

import cupy_softmax as cs
from _helpers import (
    BFLOAT16,
    CUPY,
    asnumpy,
    assert_close,
    assert_result_kind,
    assert_type_like,
    dtype_of,
    dtype_params,
    finfo,
    is_bf16,
    is_cupy,
    lse_condition,
    logsumexp_dtype,
    quiet,
    ref_logsumexp,
    ref_softmax,
    same_bytes,
    softmax_dtype,
    tile_elements,
    to_xp,
)

FUNCS = {"softmax": (cs.softmax, False), "log_softmax": (cs.log_softmax, True)}
KIND = {"softmax": "prob", "log_softmax": "log"}


def assert_lse_close(out, ref, dtype, return_sign, cond=None):
    """logsumexp's result against the reference: the value (skipping elements too
    ill-conditioned by ``cond``), and the sign when it is returned."""
    if return_sign:
        assert_close(out[0], ref[0], dtype, cond=cond)
        assert_close(out[1], ref[1], dtype, "sign")
    else:
        assert_close(out, ref, dtype, cond=cond)


def data(shape, dtype, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    return np.asarray(x).astype(dtype)


def scipy_on_original(fn, *args, **kwargs):
    """scipy's own output on our (NumPy) input, or None where scipy fails."""
    try:
        with quiet():
            return fn(*args, **kwargs)
    except Exception:
        return None


def check_kind_vs_scipy(ours, xp, scipy_out):
    """Same result type/dtype/shape as scipy where scipy works on the input."""
    if scipy_out is None:
        return
    if isinstance(scipy_out, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(scipy_out)
        for o, s in zip(ours, scipy_out):
            assert_type_like(o, s, xp)
    else:
        assert_type_like(ours, scipy_out, xp)


def is_scalar_ref(ref):
    return isinstance(ref, np.generic)


# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_signature_is_scipys(name):
    ours = inspect.signature(getattr(cs, name))
    theirs = inspect.signature(getattr(sps, name))
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == \
        [(p.name, p.default, p.kind) for p in theirs.parameters.values()]


def test_keyword_arguments():
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    assert np.allclose(cs.softmax(x=x, axis=1), sps.softmax(x, axis=1))
    assert np.allclose(cs.log_softmax(x=x, axis=0), sps.log_softmax(x, axis=0))
    ours = cs.logsumexp(a=x, axis=1, b=x, keepdims=True, return_sign=True)
    ref = sps.logsumexp(x, axis=1, b=x, keepdims=True, return_sign=True)
    assert np.allclose(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])


def test_public_names():
    for name in ["softmax", "log_softmax", "logsumexp", "SoftmaxState", "partial_state",
                 "merge_states", "state_logsumexp", "softmax_from_state", "log_softmax_from_state"]:
        assert hasattr(cs, name), name
        assert name in cs.__all__


# ---------------------------------------------------------------------------
# Shapes and axes, every float dtype
# ---------------------------------------------------------------------------

SHAPE_AXES = [
    ((7,), None), ((7,), 0), ((7,), -1), ((7,), (0,)),
    ((3, 5), None), ((3, 5), 0), ((3, 5), 1), ((3, 5), -2), ((3, 5), (0, 1)), ((3, 5), (1, 0)),
    ((2, 3, 4), None), ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 4), (0, 2)), ((2, 3, 4), (1, 2)),
    ((2, 3, 4), (-3, -2)),
    ((2, 3, 4, 5), None), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), (1, 3)), ((2, 3, 4, 5), (0, 1, 3)),
    ((2, 3, 4, 5), (3, 0)), ((2, 3, 4, 5), (0, 1, 2, 3)), ((2, 3, 4, 5), (2, -1)),
    ((5, 1, 3), 1), ((1, 9), 0),
]
SHAPE_AXES_IDS = [f"{s}-ax{a}" for s, a in SHAPE_AXES]


@pytest.mark.parametrize("shape,axis", SHAPE_AXES, ids=SHAPE_AXES_IDS)
@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("fname", ["softmax", "log_softmax"])
def test_softmax_shapes_axes(xp, tiles, fname, dtype_name, shape, axis):
    fn, log = FUNCS[fname]
    dtype = dtype_of(dtype_name)
    x = data(shape, dtype, seed=len(shape))
    out = fn(to_xp(xp, x), axis=axis)
    assert_result_kind(out, xp, softmax_dtype(dtype), shape, scalar=False)
    if not is_bf16(dtype):
        check_kind_vs_scipy(out, xp, scipy_on_original(getattr(sps, fname), x, axis=axis))
    assert_close(out, ref_softmax(x, axis, log), dtype, KIND[fname])


@pytest.mark.parametrize("shape,axis", SHAPE_AXES, ids=SHAPE_AXES_IDS)
@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("keepdims", [False, True], ids=["", "keepdims"])
@pytest.mark.parametrize("return_sign", [False, True], ids=["", "sign"])
def test_logsumexp_shapes_axes(xp, tiles, dtype_name, shape, axis, keepdims, return_sign):
    dtype = dtype_of(dtype_name)
    x = data(shape, dtype, seed=len(shape) + 10, scale=30.0)
    out = cs.logsumexp(to_xp(xp, x), axis=axis, keepdims=keepdims, return_sign=return_sign)
    ref = ref_logsumexp(x, axis=axis, keepdims=keepdims, return_sign=return_sign)
    rdtype = logsumexp_dtype(x)
    if not is_bf16(dtype):
        check_kind_vs_scipy(out, xp, scipy_on_original(
            sps.logsumexp, x, axis=axis, keepdims=keepdims, return_sign=return_sign))
    if return_sign:
        assert isinstance(out, tuple) and len(out) == 2
        res, sgn = out
        for o, r in zip(out, ref):
            assert_result_kind(o, xp, rdtype, np.shape(r), scalar=is_scalar_ref(r))
        assert_close(res, ref[0], rdtype, "log")
        assert_close(sgn, ref[1], rdtype, "sign")
    else:
        assert_result_kind(out, xp, rdtype, np.shape(ref), scalar=is_scalar_ref(ref))
        assert_close(out, ref, rdtype, "log")


@pytest.mark.parametrize("axis", [(), None, 0, (0, 1)])
def test_axis_empty_tuple(xp, axis):
    """axis=() reduces nothing: softmax is 1 (NaN for non-finite), logsumexp is x."""
    x = np.array([[1.0, -np.inf, 3.0], [np.inf, np.nan, -2.0]])
    for fname, (fn, log) in FUNCS.items():
        out = fn(to_xp(xp, x), axis=axis)
        check_kind_vs_scipy(out, xp, scipy_on_original(getattr(sps, fname), x, axis=axis))
        assert_close(out, ref_softmax(x, axis, log), np.float64, KIND[fname], what=fname)
    for keepdims in (False, True):
        out = cs.logsumexp(to_xp(xp, x), axis=axis, keepdims=keepdims)
        ref = ref_logsumexp(x, axis=axis, keepdims=keepdims)
        check_kind_vs_scipy(out, xp, scipy_on_original(sps.logsumexp, x, axis=axis, keepdims=keepdims))
        assert_close(out, ref, np.float64)


def test_axis_numpy_integer(xp):
    x = data((3, 4), np.float64)
    for ax in (np.int64(1), np.int32(-1), np.intp(0)):
        assert_close(cs.softmax(to_xp(xp, x), axis=ax), ref_softmax(x, int(ax)), np.float64, "prob")
        assert_close(cs.logsumexp(to_xp(xp, x), axis=ax), ref_logsumexp(x, int(ax)), np.float64)
    assert_close(cs.logsumexp(to_xp(xp, x), axis=(np.int64(0), np.int8(1))), ref_logsumexp(x, (0, 1)),
                 np.float64)


# ---------------------------------------------------------------------------
# Special values: +-inf, NaN, all -inf slices, the ends of the range
# ---------------------------------------------------------------------------

def special_rows(dtype):
    big = float(finfo(dtype).max)
    tiny = float(finfo(dtype).tiny)
    sub = float(getattr(finfo(dtype), "smallest_subnormal", tiny * finfo(dtype).eps))
    inf, nan = np.inf, np.nan
    rows = [
        [1, 2, 3, 4, 5],
        [-inf, -inf, -inf, -inf, -inf],
        [-inf, 0, -inf, 1, -inf],
        [inf, 1, 2, 3, 4],
        [inf, inf, 0, 0, -inf],
        [inf, -inf, 0, 0, 1],
        [nan, 1, 2, 3, 4],
        [nan, inf, -inf, 0, 1],
        [-inf, -inf, -inf, 5, -inf],
        [big, big, -big, 0, big],
        [-big, -big, -big, -big, -big],
        [big, -big, big / 2, -big / 2, 0],
        [tiny, sub, 0.0, -0.0, -sub],
        [-big, -inf, -big, -inf, -inf],
        [nan, nan, nan, nan, nan],
    ]
    return np.array(rows, dtype=np.float64).astype(dtype)


@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("axis", [-1, 0, None, (0, 1)])
@pytest.mark.parametrize("fname", ["softmax", "log_softmax"])
def test_softmax_special_values(xp, tiles, fname, dtype_name, axis):
    fn, log = FUNCS[fname]
    dtype = dtype_of(dtype_name)
    x = special_rows(dtype)
    out = fn(to_xp(xp, x), axis=axis)
    if not is_bf16(dtype):
        check_kind_vs_scipy(out, xp, scipy_on_original(getattr(sps, fname), x, axis=axis))
    assert_close(out, ref_softmax(x, axis, log), dtype, KIND[fname])


@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("n", [5, 1000, 40000])
@pytest.mark.parametrize("axis", [-1, 0])
def test_subnormal_probabilities_kept(xp, tiles, dtype_name, n, axis):
    """Probabilities below the type's normal range keep their subnormal bits: the
    kernels' fast exp must not flush them to zero (the tolerance allows 4 of the
    smallest subnormals, far less than a flushed value)."""
    dtype = dtype_of(dtype_name)
    info = finfo(dtype)
    smallest = float(getattr(info, "smallest_subnormal", float(info.tiny) * float(info.eps)))
    # 0 (the max) and a ladder from just above the normal range to below the smallest
    # subnormal, in two orders: rows (axis -1) or columns (axis 0)
    ladder = np.linspace(np.log(float(info.tiny)) + 1, np.log(smallest) - 1, n - 1)
    x = np.concatenate([[0.0], np.random.default_rng(n).permutation(ladder)])
    x = np.stack([x, x[::-1]]).astype(dtype)
    if axis == 0:
        x = np.ascontiguousarray(x.T)
    out = cs.softmax(to_xp(xp, x), axis=axis)
    ref = ref_softmax(x, axis, False)
    assert_close(out, ref, dtype, "prob")
    got = asnumpy(out).astype(np.float64)
    assert ((got > 0) & (got < float(info.tiny))).any()


@pytest.mark.parametrize("dtype_name", dtype_params())
@pytest.mark.parametrize("axis", [-1, 0, None])
@pytest.mark.parametrize("return_sign", [False, True], ids=["", "sign"])
def test_logsumexp_special_values(xp, tiles, dtype_name, axis, return_sign):
    dtype = dtype_of(dtype_name)
    x = special_rows(dtype)
    out = cs.logsumexp(to_xp(xp, x), axis=axis, return_sign=return_sign)
    ref = ref_logsumexp(x, axis=axis, return_sign=return_sign)
    rdtype = logsumexp_dtype(x)
    if not is_bf16(dtype):
        check_kind_vs_scipy(out, xp, scipy_on_original(sps.logsumexp, x, axis=axis, return_sign=return_sign))
    assert_lse_close(out, ref, rdtype, return_sign)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 0.0, -7.5])
def test_single_element_specials(xp, value):
    x = np.array([value])
    for fname, (fn, log) in FUNCS.items():
        assert_close(fn(to_xp(xp, x)), ref_softmax(x, None, log), np.float64, KIND[fname], what=fname)
    res, sgn = cs.logsumexp(to_xp(xp, x), return_sign=True)
    ref = ref_logsumexp(x, return_sign=True)
    assert_close(res, ref[0], np.float64)
    assert_close(sgn, ref[1], np.float64, "sign")


def test_documented_special_results():
    """The documented values, spelled out."""
    inf, nan = np.inf, np.nan
    assert np.isnan(cs.softmax(np.array([inf, 1.0]))).all()
    assert np.isnan(cs.softmax(np.array([-inf, -inf]))).all()
    assert np.isnan(cs.softmax(np.array([nan, 1.0]))).all()
    out = cs.log_softmax(np.array([inf, 1.0]))
    assert np.isnan(out[0]) and out[1] == -inf
    assert np.isnan(cs.log_softmax(np.array([-inf, -inf]))).all()
    assert cs.logsumexp(np.array([-inf, -inf])) == -inf
    assert cs.logsumexp(np.array([inf, -inf])) == inf
    assert np.isnan(cs.logsumexp(np.array([nan, inf])))
    assert cs.logsumexp(np.array([1e308, 1e308])) == np.float64(1e308) + np.log(2)
    out = cs.log_softmax(np.array([1000.0, 1.0]))
    assert np.array_equal(out, [0.0, -999.0])


# ---------------------------------------------------------------------------
# Weights b: broadcasting, masking, signs
# ---------------------------------------------------------------------------

B_CASES = [
    ((3,), (2, 3), None), ((3,), (2, 3), 0), ((3,), (2, 3), -1), ((3,), (2, 3), (0, 1)),
    ((2, 1), (1, 3), 1), ((2, 1), (1, 3), None), ((2, 3), (3,), 1), ((2, 3), (2, 1), 0),
    ((2, 3, 4), (3, 1), (0, 2)), ((4,), (), None), ((2, 3), (1,), -1), ((1,), (2, 3, 4), (1, 2)),
    ((), (3,), None), ((), (2, 3), 1), ((2, 3), (2, 3), None), ((4, 1, 5), (1, 6, 1), (0, 2)),
    ((5,), (5,), 0),
]


@pytest.mark.parametrize("a_shape,b_shape,axis", B_CASES, ids=[f"a{a}-b{b}-ax{x}" for a, b, x in B_CASES])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
@pytest.mark.parametrize("signed", [False, True], ids=["positive", "signed"])
@pytest.mark.parametrize("keepdims", [False, True], ids=["", "keepdims"])
def test_logsumexp_b_broadcasting(xp, tiles, a_shape, b_shape, axis, dtype_name, signed, keepdims):
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(3)
    a = (rng.standard_normal(a_shape) * 3).astype(dtype)
    b = rng.uniform(0.25, 2.0, b_shape)
    if signed:
        b = b * rng.choice([-1.0, 1.0], b_shape)
    b = np.asarray(b).astype(dtype)
    cond = lse_condition(a, axis=axis, b=b, keepdims=keepdims)
    rdtype = logsumexp_dtype(a, b)
    for return_sign in (False, True):
        out = cs.logsumexp(to_xp(xp, a), axis=axis, b=to_xp(xp, b), keepdims=keepdims, return_sign=return_sign)
        ref = ref_logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
        check_kind_vs_scipy(out, xp, scipy_on_original(sps.logsumexp, a, axis=axis, b=b, keepdims=keepdims,
                                                       return_sign=return_sign))
        if return_sign:
            assert_result_kind(out[0], xp, rdtype, np.shape(ref[0]), is_scalar_ref(ref[0]))
            assert_close(out[0], ref[0], rdtype, cond=cond)
            assert_close(out[1], ref[1], rdtype, "sign", cond=cond)
        else:
            assert_result_kind(out, xp, rdtype, np.shape(ref), is_scalar_ref(ref))
            assert_close(out, ref, rdtype, cond=cond)


@pytest.mark.parametrize("a_dtype,b,expected", [
    ("float32", 2.0, "float32"), ("float32", 2, "float32"), ("float16", 2.0, "float16"),
    ("float32", np.float64(2.0), "float64"), ("float16", np.float32(2.0), "float32"),
    ("float32", np.array([1.0, 1.0]), "float64"), ("float32", np.array([1, 1], np.int64), "float64"),
    ("float16", np.array([1, 1], np.int8), "float16"), ("int8", np.array([1.0, 1.0], np.float16), "float16"),
    ("int8", None, "float64"), ("bool", None, "float64"), ("int16", np.float32(1), "float32"),
    ("float32", True, "float32"), ("float64", np.array([1 + 0j, 1]), "complex128"),
    ("complex64", np.float32(1), "complex64"),
])
def test_logsumexp_result_dtype(xp, a_dtype, b, expected):
    a = np.array([1, 0]).astype(a_dtype)
    b_in = to_xp(xp, b) if isinstance(b, (np.ndarray, np.generic)) else b
    if is_cupy(xp) and isinstance(b, np.generic):
        b_in = to_xp(xp, b)  # a 0-d CuPy array: strong, like the NumPy scalar
    out = cs.logsumexp(to_xp(xp, a), b=b_in)
    assert np.dtype(out.dtype) == np.dtype(expected)
    assert np.dtype(expected) == logsumexp_dtype(a, b)
    theirs = scipy_on_original(sps.logsumexp, a, b=b)
    assert theirs is not None and theirs.dtype == np.dtype(expected)
    assert_close(out, ref_logsumexp(a, b=b), np.dtype(expected))


def test_logsumexp_python_scalar_a_is_weak():
    out = cs.logsumexp(1.0, b=np.float32([1, 2]))
    theirs = sps.logsumexp(1.0, b=np.float32([1, 2]))
    assert type(out) is type(theirs) is np.float32
    assert_close(out, ref_logsumexp(1.0, b=np.array([1.0, 2.0])), np.float32)


@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
def test_b_zero_masks_inf_and_nan(xp, tiles, dtype_name):
    dtype = np.dtype(dtype_name)
    inf, nan = np.inf, np.nan
    a = np.array([[inf, nan, -inf, 1, 2],
                  [inf, 0, 0, 1, 2],
                  [nan, nan, nan, nan, 3],
                  [inf, nan, 5, 1, 2],
                  [inf, nan, 0, 1, 2]], dtype)
    b = np.array([[0, 0, 0, 1, 1],
                  [0, 1, 1, 1, 1],
                  [0, -0.0, 0, 0, 2],
                  [0, 0, 0, 0, 0],
                  [-0.0, 0, 1, -1, 1]], dtype)
    for axis in (1, None):
        for return_sign in (False, True):
            out = cs.logsumexp(to_xp(xp, a), axis=axis, b=to_xp(xp, b), return_sign=return_sign)
            ref = ref_logsumexp(a, axis=axis, b=b, return_sign=return_sign)
            cond = lse_condition(a, axis=axis, b=b)
            assert_lse_close(out, ref, dtype, return_sign, cond)
    # spelled out
    res = asnumpy(cs.logsumexp(to_xp(xp, a), axis=1, b=to_xp(xp, b), return_sign=True))
    assert res[0][0] == np.asarray(np.logaddexp(1, 2), dtype)
    assert res[0][3] == -inf and res[1][3] == 0


def test_b_scalar_and_list():
    a = np.array([0.5, 1.5, -2.0])
    for b in (0, 0.0, 2, 3.5, -1.0, [1, 2, 3], [[1, 0, 1], [2, 2, 2]], np.float64(0.5)):
        for return_sign in (False, True):
            out = cs.logsumexp(a, b=b, return_sign=return_sign)
            ref = ref_logsumexp(a, b=b, return_sign=return_sign)
            check_kind_vs_scipy(out, np, scipy_on_original(sps.logsumexp, a, b=b, return_sign=return_sign))
            assert_lse_close(out, ref, np.float64, return_sign)


def test_b_nonfinite_weights(xp):
    a = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    b = np.array([[np.nan, 1], [np.inf, 1], [-np.inf, 1], [np.inf, -np.inf]])
    for return_sign in (False, True):
        out = cs.logsumexp(to_xp(xp, a), axis=1, b=to_xp(xp, b), return_sign=return_sign)
        ref = ref_logsumexp(a, axis=1, b=b, return_sign=return_sign)
        assert_lse_close(out, ref, np.float64, return_sign)


def test_negative_weights_sign(xp):
    a = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 1.0], [3.0, -np.inf]])
    b = np.array([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0], [-2.0, 5.0]])
    res, sgn = cs.logsumexp(to_xp(xp, a), axis=1, b=to_xp(xp, b), return_sign=True)
    ref = sps.logsumexp(a, axis=1, b=b, return_sign=True)
    assert_close(res, ref[0], np.float64)
    assert np.array_equal(asnumpy(sgn), [-1.0, 1.0, 0.0, -1.0])
    plain = asnumpy(cs.logsumexp(to_xp(xp, a), axis=1, b=to_xp(xp, b)))
    # a negative sum is NaN without return_sign, an exactly cancelling one is -inf
    assert np.isnan(plain[0]) and np.isnan(plain[3]) and plain[2] == -np.inf
    assert_close(plain[1], ref[0][1], np.float64)
    # scalar form, scipy's docstring example
    out = cs.logsumexp([1, 2], b=[1, -1], return_sign=True)
    theirs = sps.logsumexp([1, 2], b=[1, -1], return_sign=True)
    assert type(out) is tuple and all(type(o) is np.float64 for o in out)
    assert_close(out[0], theirs[0], np.float64)
    assert out[1] == theirs[1] == -1.0


# ---------------------------------------------------------------------------
# Empty arrays and zero-length axes
# ---------------------------------------------------------------------------

EMPTY_CASES = [((0,), None), ((0,), 0), ((3, 0), None), ((3, 0), 0), ((3, 0), 1), ((0, 4), 0),
               ((0, 4), 1), ((0, 4), -1), ((2, 0, 3), 1), ((2, 0, 3), (0, 2)), ((2, 0, 3), (1, 2)),
               ((0, 0), None), ((2, 0, 3), None)]


@pytest.mark.parametrize("shape,axis", EMPTY_CASES, ids=[f"{s}-ax{a}" for s, a in EMPTY_CASES])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "int8", "bool", "int64"])
def test_softmax_empty(xp, shape, axis, dtype_name):
    """scipy raises ValueError where the reduced extent is empty; we return an empty result."""
    x = np.zeros(shape, dtype_name)
    for fname, (fn, log) in FUNCS.items():
        out = fn(to_xp(xp, x), axis=axis)
        assert_result_kind(out, xp, softmax_dtype(x.dtype), shape, scalar=False)
        theirs = scipy_on_original(getattr(sps, fname), x, axis=axis)
        if theirs is not None:
            check_kind_vs_scipy(out, xp, theirs)


@pytest.mark.parametrize("shape,axis", EMPTY_CASES, ids=[f"{s}-ax{a}" for s, a in EMPTY_CASES])
@pytest.mark.parametrize("keepdims", [False, True], ids=["", "keepdims"])
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16", "complex128"])
def test_logsumexp_empty(xp, shape, axis, keepdims, dtype_name):
    """-inf over an empty extent; the sign of an empty sum is 0 (scipy: -1, documented)."""
    x = np.zeros(shape, dtype_name)
    rdtype = logsumexp_dtype(x)
    ref = ref_logsumexp(x, axis=axis, keepdims=keepdims)
    out = cs.logsumexp(to_xp(xp, x), axis=axis, keepdims=keepdims)
    theirs = scipy_on_original(sps.logsumexp, x, axis=axis, keepdims=keepdims)
    check_kind_vs_scipy(out, xp, theirs)  # also where scipy works: same type/shape
    assert_result_kind(out, xp, rdtype, np.shape(ref), is_scalar_ref(ref))
    assert_close(out, ref, rdtype)
    res, sgn = cs.logsumexp(to_xp(xp, x), axis=axis, keepdims=keepdims, return_sign=True)
    assert_result_kind(res, xp, np.zeros(0, rdtype).real.dtype, np.shape(ref), is_scalar_ref(ref))
    assert_result_kind(sgn, xp, rdtype, np.shape(ref), is_scalar_ref(ref))
    assert np.all(asnumpy(res) == -np.inf)
    assert np.all(asnumpy(sgn) == 0)


def test_logsumexp_empty_with_b(xp):
    a = np.zeros((0, 3))
    b = np.ones((2, 1, 3))
    out = cs.logsumexp(to_xp(xp, a), axis=1, b=to_xp(xp, b))
    assert out.shape == (2, 3) and np.all(asnumpy(out) == -np.inf)
    out = cs.logsumexp(to_xp(xp, a), axis=-1, b=to_xp(xp, b))
    assert out.shape == (2, 0)


# ---------------------------------------------------------------------------
# 0-d inputs, lists and Python scalars
# ---------------------------------------------------------------------------

ZERO_D_VALUES = [3.0, -np.inf, np.inf, np.nan, -1e4]


@pytest.mark.parametrize("value", ZERO_D_VALUES)
@pytest.mark.parametrize("dtype_name", ["float64", "float32", "float16"])
@pytest.mark.parametrize("form", ["scalar", "array0d"])
@pytest.mark.parametrize("axis", [None, 0, -1])
def test_zero_d(xp, value, dtype_name, form, axis):
    dtype = np.dtype(dtype_name)
    x_np = dtype.type(value) if form == "scalar" else np.array(value, dtype)
    x = x_np if xp is np else to_xp(xp, x_np)
    for fname, (fn, log) in FUNCS.items():
        out = fn(x, axis=axis)
        theirs = scipy_on_original(getattr(sps, fname), x_np, axis=axis)
        assert theirs is not None
        assert_type_like(out, theirs, xp)
        assert_close(out, ref_softmax(x_np, axis, log), dtype, KIND[fname], what=fname)
    for keepdims in (False, True):
        for return_sign in (False, True):
            out = cs.logsumexp(x, axis=axis, keepdims=keepdims, return_sign=return_sign)
            theirs = scipy_on_original(sps.logsumexp, x_np, axis=axis, keepdims=keepdims,
                                       return_sign=return_sign)
            assert theirs is not None
            check_kind_vs_scipy(out, xp, theirs)
            ref = ref_logsumexp(x_np, axis=axis, keepdims=keepdims, return_sign=return_sign)
            if return_sign:
                assert_close(out[0], ref[0], dtype)
                assert_close(out[1], ref[1], dtype, "sign")
            else:
                assert_close(out, ref, dtype)


def test_zero_d_with_b_and_empty_axis(xp):
    x = np.array(3.0)
    for kwargs in ({"b": 2.0}, {"b": np.array([1.0, 2.0])}, {"axis": ()}, {"b": 2.0, "keepdims": True}):
        kw = {k: (to_xp(xp, v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
        out = cs.logsumexp(to_xp(xp, x), **kw)
        theirs = scipy_on_original(sps.logsumexp, x, **kwargs)
        check_kind_vs_scipy(out, xp, theirs)
        assert_close(out, ref_logsumexp(x, **kwargs), np.float64)


LIST_CASES = [
    ("softmax", ([1.0, 2.0, 3.0],), {}),
    ("softmax", ([[1, 2], [3, 5]],), {"axis": 1}),
    ("softmax", (3.0,), {}),
    ("softmax", (3,), {}),
    ("softmax", (-np.inf,), {}),
    ("log_softmax", ([1, 2, 3],), {}),
    ("log_softmax", (-2.5,), {}),
    ("log_softmax", ([[0.5], [1.5]],), {"axis": 0}),
    ("logsumexp", ([1, 2, 3],), {}),
    ("logsumexp", (3,), {}),
    ("logsumexp", (2.5,), {"b": 3}),
    ("logsumexp", ([[1.0, 2.0], [3.0, 4.0]],), {"axis": 0, "b": [1, -1], "return_sign": True}),
    ("logsumexp", ([True, False],), {}),
    ("logsumexp", ([1 + 1j, 2 - 1j],), {}),
    ("logsumexp", ([1.0, 2.0],), {"b": [[1.0], [2.0]], "axis": -1, "keepdims": True}),
]


@pytest.mark.parametrize("fname,args,kwargs", LIST_CASES, ids=[f"{f}{a}{k}" for f, a, k in LIST_CASES])
def test_lists_and_python_scalars(fname, args, kwargs):
    out = getattr(cs, fname)(*args, **kwargs)
    theirs = scipy_on_original(getattr(sps, fname), *args, **kwargs)
    check_kind_vs_scipy(out, np, theirs)
    if fname == "logsumexp":
        ref = ref_logsumexp(*args, **kwargs)
        rdtype = logsumexp_dtype(*args[:1], kwargs.get("b"))
        if kwargs.get("return_sign"):
            assert_close(out[0], ref[0], rdtype)
            assert_close(out[1], ref[1], rdtype, "sign")
        else:
            assert_close(out, ref, rdtype)
    else:
        x = np.asarray(args[0])
        assert_close(out, ref_softmax(x, kwargs.get("axis"), fname == "log_softmax"), softmax_dtype(x.dtype),
                     KIND[fname])


def test_python_bool_scalar():
    """scipy raises TypeError on bool softmax; ours converts to float16 first."""
    for fname, (fn, log) in FUNCS.items():
        out = fn(True)
        assert type(out) is np.float16
        assert out == (0.0 if log else 1.0)


# ---------------------------------------------------------------------------
# Integer and bool inputs
# ---------------------------------------------------------------------------

INT_NAMES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool"]


def int_data(dtype, shape=(4, 9), seed=0):
    dtype = np.dtype(dtype)
    if dtype == bool:
        return np.random.default_rng(seed).integers(0, 2, shape).astype(bool)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    x = rng.integers(max(info.min, -40), min(info.max, 40), shape, endpoint=True).astype(dtype)
    # the ends of the type's range, where scipy's softmax wraps around
    x[0, :4] = np.array([info.min, info.max, info.min, 0], dtype=dtype)
    x[1, 0] = info.max
    return x


@pytest.mark.parametrize("dtype_name", INT_NAMES)
@pytest.mark.parametrize("axis", [None, 1, 0, (0, 1)])
def test_integer_inputs(xp, tiles, dtype_name, axis):
    x = int_data(dtype_name)
    for fname, (fn, log) in FUNCS.items():
        out = fn(to_xp(xp, x), axis=axis)
        sdt = softmax_dtype(x.dtype)
        assert_result_kind(out, xp, sdt, x.shape, scalar=False)
        theirs = scipy_on_original(getattr(sps, fname), x, axis=axis)
        check_kind_vs_scipy(out, xp, theirs)
        # the reference: the values converted first (scipy itself wraps around for small ints)
        assert_close(out, ref_softmax(x, axis, log), sdt, KIND[fname], what=fname)
    for return_sign in (False, True):
        out = cs.logsumexp(to_xp(xp, x), axis=axis, return_sign=return_sign)
        theirs = scipy_on_original(sps.logsumexp, x, axis=axis, return_sign=return_sign)
        check_kind_vs_scipy(out, xp, theirs)
        ref = ref_logsumexp(x, axis=axis, return_sign=return_sign)
        rdtype = logsumexp_dtype(x)
        if return_sign:
            assert_close(out[0], ref[0], rdtype)
            assert_close(out[1], ref[1], rdtype, "sign")
        else:
            assert_close(out, ref, rdtype)


def test_int8_wraparound_is_fixed(xp):
    """scipy: int8 [100, -100] computes -100 - 100 in int8 and gives [0, nan]."""
    x = np.array([100, -100], np.int8)
    out = asnumpy(cs.softmax(to_xp(xp, x)))
    assert out.dtype == np.float16
    assert out[0] == 1 and out[1] == 0
    out = asnumpy(cs.log_softmax(to_xp(xp, x)))
    assert out.dtype == np.float16
    assert out[0] == 0 and out[1] == -200
    x = np.array([0, 1, 2], np.uint16)
    assert_close(cs.softmax(to_xp(xp, x)), sps.softmax(np.array([0.0, 1.0, 2.0])), np.float32, "prob")


@pytest.mark.parametrize("dtype_name", ["int8", "uint8", "bool", "int16", "uint16", "int32", "int64"])
def test_integer_softmax_dtype_rule(dtype_name):
    expected = {"int8": "float16", "uint8": "float16", "bool": "float16", "int16": "float32",
                "uint16": "float32", "int32": "float64", "int64": "float64"}[dtype_name]
    assert softmax_dtype(np.dtype(dtype_name)) == np.dtype(expected)
    out = cs.softmax(np.ones(3, dtype_name))
    assert out.dtype == np.dtype(expected)
    assert_close(out, np.full(3, 1 / 3), np.dtype(expected), "prob")


# ---------------------------------------------------------------------------
# Complex logsumexp
# ---------------------------------------------------------------------------

def complex_data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape) * 3 + 1j * rng.uniform(-10, 10, shape)
    return z.astype(dtype)


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
@pytest.mark.parametrize("shape,axis", [((7,), None), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), (0, 2)),
                                         ((2, 3, 4), None), ((4, 1), -1)])
@pytest.mark.parametrize("keepdims", [False, True], ids=["", "keepdims"])
def test_complex_logsumexp(xp, tiles, dtype_name, shape, axis, keepdims):
    dtype = np.dtype(dtype_name)
    z = complex_data(shape, dtype, seed=len(shape))
    cond = lse_condition(z, axis=axis, b=np.ones(shape, np.complex128), keepdims=keepdims)
    for return_sign in (False, True):
        out = cs.logsumexp(to_xp(xp, z), axis=axis, keepdims=keepdims, return_sign=return_sign)
        theirs = scipy_on_original(sps.logsumexp, z, axis=axis, keepdims=keepdims, return_sign=return_sign)
        check_kind_vs_scipy(out, xp, theirs)
        ref = ref_logsumexp(z, axis=axis, keepdims=keepdims, return_sign=return_sign)
        if return_sign:
            assert np.dtype(out[0].dtype) == dtype.type(0).real.dtype
            assert_close(out[0], ref[0], dtype, cond=cond)
            assert_close(out[1], ref[1], dtype, "sign", cond=cond)
        else:
            assert_close(out, ref, dtype, cond=cond)


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
def test_complex_wrap_and_specials(xp, dtype_name):
    dtype = np.dtype(dtype_name)
    inf, nan, pi = np.inf, np.nan, np.pi
    rows = [
        [0 + 4j, -50 + 0j, -50 + 0j],          # imaginary part 4 wraps to 4 - 2 pi
        [0 + 100j, 1 + 3j, -inf + 0j],
        [pi * 1j, -inf + 1j, -inf + 2j],     # exactly at the branch cut
        [-pi * 1j, -inf + 0j, -inf + 0j],
        [1 + 3.1j, 1 + 3.1j, 1 + 3.1j],    # angle near pi, no wrap
        [1 - 3.1j, 1 - 3.1j, 1 - 3.1j],
        [-inf + 0j, -inf + 0j, -inf + 0j],  # all -inf: -inf + 0j
        [nan + 0j, 1 + 0j, 2 + 0j],
        [1 + 2j, inf + 0j, 0j],
        [-inf + 2j, 3 + 0.5j, 3 - 0.5j],
    ]
    z = np.array(rows, dtype)
    for return_sign in (False, True):
        out = cs.logsumexp(to_xp(xp, z), axis=1, return_sign=return_sign)
        ref = ref_logsumexp(z, axis=1, return_sign=return_sign)
        if return_sign:
            assert_close(out[0], ref[0], dtype)
            assert_close(out[1], ref[1], dtype, "sign")
        else:
            assert_close(out, ref, dtype)
            imag = asnumpy(out).imag
            fin = np.isfinite(imag)
            pi_t = float(np.asarray(np.pi, imag.dtype))
            assert np.all((imag[fin] > -pi_t) & (imag[fin] <= pi_t))
    out = asnumpy(cs.logsumexp(to_xp(xp, z), axis=1))
    assert out[6] == complex(-inf, 0)


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
@pytest.mark.parametrize("tiles_n", [None, 1, 2])
def test_complex_inf_in_another_block(xp, dtype_name, tiles_n):
    """+inf in one block, finite values in others: the merge must not turn inf + 0j
    into inf + nan j (a complex sum times a real rescale factor cast to complex)."""
    dtype = np.dtype(dtype_name)
    rows = [[np.inf + 0j, 0j, 0j, 0j], [0j, 0j, 0j, np.inf + 0j], [1 + 2j, complex(np.inf, 1), 0j, 0j],
            [0j, 0j, complex(np.inf, -2), 0j], [complex(-np.inf, 1), 0j, np.inf, 0j]]
    z = np.array(rows, dtype)
    with tile_elements(tiles_n):
        for return_sign in (False, True):
            out = cs.logsumexp(to_xp(xp, z), axis=1, return_sign=return_sign)
            ref = ref_logsumexp(z, axis=1, return_sign=return_sign)
            assert_lse_close(out, ref, dtype, return_sign)


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
@pytest.mark.parametrize("tiles_n", [None, 1])
def test_complex_nan_beside_overflow(xp, dtype_name, tiles_n):
    """A NaN beside a value whose exp overflows complex64 unshifted (a slice with a NaN
    has a NaN max, so nothing is shifted): NaN, not |NaN + inf j| = inf (scipy 1.17
    gives inf for complex64 here, NaN for complex128).  Found by the fuzz tests."""
    z = np.array([89 + 1j, complex(np.nan, 0)], dtype_name)
    with tile_elements(tiles_n):
        assert np.isnan(asnumpy(cs.logsumexp(to_xp(xp, z))))
        value, sign = cs.logsumexp(to_xp(xp, z), return_sign=True)
        assert np.isnan(asnumpy(value)) and np.isnan(asnumpy(sign))


@pytest.mark.parametrize("log", [False, True])
def test_float32_many_blocks(log):
    """Blocks of one element: 215 terms of 6e-6 merge one after the other into a running
    sum of about 1, which float32 would round at every step (log_softmax of the max was
    1e-5 off, ~100 ulps, until the running sum went float64).  Found by the fuzz tests."""
    x = np.zeros((6, 6, 6), np.float32)
    x[0, 0, 0] = 12
    with tile_elements(1):
        out = (cs.log_softmax if log else cs.softmax)(x, axis=None)
    assert_close(out, ref_softmax(x, None, log), np.float32, "log" if log else "prob")


def test_complex_inf_long_row():
    """The same with the default block size: a row longer than one block."""
    z = np.zeros(600_000, np.complex128)
    z[0] = np.inf
    out = cs.logsumexp(z)
    assert out == complex(np.inf, 0) and not np.isnan(out.imag)


@pytest.mark.parametrize("dtype_name", ["complex64", "complex128"])
def test_complex_weights(xp, dtype_name):
    dtype = np.dtype(dtype_name)
    z = complex_data((3, 6), dtype, seed=5)
    z[0, 0] = complex(np.inf, 1)
    z[1, 2] = complex(np.nan, 0)
    rng = np.random.default_rng(6)
    for b in (rng.uniform(0.5, 2, (3, 6)), -rng.uniform(0.5, 2, (1, 6)),
              (rng.standard_normal((3, 6)) + 1j * rng.standard_normal((3, 6)))):
        b = np.asarray(b)
        b[0, 0] = 0  # masks the inf
        if b.shape[0] > 1:
            b[1, 2] = 0  # masks the NaN
        b_dt = b.astype(np.result_type(b.dtype, np.float32))
        rdtype = logsumexp_dtype(z, b_dt)
        cond = lse_condition(z, axis=1, b=b_dt)
        for return_sign in (False, True):
            out = cs.logsumexp(to_xp(xp, z), axis=1, b=to_xp(xp, b_dt), return_sign=return_sign)
            ref = ref_logsumexp(z, axis=1, b=b_dt, return_sign=return_sign)
            if return_sign:
                assert_close(out[0], ref[0], rdtype, cond=cond)
                assert_close(out[1], ref[1], rdtype, "sign", cond=cond)
            else:
                assert np.dtype(out.dtype) == rdtype
                assert_close(out, ref, rdtype, cond=cond)


def test_real_input_complex_weights(xp):
    a = np.array([1.0, 3.0])
    b = np.array([1j, -1])
    out = cs.logsumexp(to_xp(xp, a), b=to_xp(xp, b))
    assert np.dtype(out.dtype) == np.complex128
    assert_close(out, sps.logsumexp(a, b=b), np.complex128)


# ---------------------------------------------------------------------------
# Memory layouts: non-contiguous, reversed, Fortran, broadcast views
# ---------------------------------------------------------------------------

VIEWS = {
    "transposed": lambda xp, a: a.T,
    "strided": lambda xp, a: a[::2, 1::3],
    "reversed": lambda xp, a: a[::-1, ::-1],
    "reversed-last": lambda xp, a: a[:, ::-1],
    "reversed-first": lambda xp, a: a[::-1],
    "fortran": lambda xp, a: xp.asfortranarray(a),
    "broadcast": lambda xp, a: xp.broadcast_to(a[:1], a.shape),
    "3d-permuted": lambda xp, a: a[:, :12].reshape(a.shape[0], 3, 4).transpose(2, 0, 1),
    "offset": lambda xp, a: a[1:, 1:],
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("dtype_name", dtype_params(["float32", "float64", "float16", "bfloat16"]))
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 1)])
def test_views(xp, tiles, view, dtype_name, axis):
    dtype = dtype_of(dtype_name)
    base = to_xp(xp, data((10, 13), dtype, seed=4))
    x = VIEWS[view](xp, base)
    if isinstance(axis, tuple) and x.ndim < 2:
        pytest.skip("needs 2 dims")
    x_np = asnumpy(x)
    for fname, (fn, log) in FUNCS.items():
        out = fn(x, axis=axis)
        assert tuple(out.shape) == x_np.shape
        assert_close(out, ref_softmax(x_np, axis, log), dtype, KIND[fname], what=fname)
    out = cs.logsumexp(x, axis=axis, keepdims=True)
    assert_close(out, ref_logsumexp(x_np, axis=axis, keepdims=True), logsumexp_dtype(x_np))


def test_views_of_b(xp, tiles):
    rng = np.random.default_rng(8)
    a = to_xp(xp, rng.standard_normal((6, 8)))
    b_base = to_xp(xp, rng.uniform(-2, 2, (8, 6)))
    for b in (b_base.T, b_base[::-1].T, xp.broadcast_to(b_base[:1, :1], (6, 8))):
        a_np, b_np = asnumpy(a), asnumpy(b)
        cond = lse_condition(a_np, axis=1, b=b_np)
        res, sgn = cs.logsumexp(a[:, ::-1], axis=1, b=b[:, ::-1], return_sign=True)
        ref = ref_logsumexp(a_np[:, ::-1], axis=1, b=b_np[:, ::-1], return_sign=True)
        assert_close(res, ref[0], np.float64, cond=cond)
        assert_close(sgn, ref[1], np.float64, "sign", cond=cond)


# ---------------------------------------------------------------------------
# Long reductions, walked in many blocks
# ---------------------------------------------------------------------------

LARGE_CASES = [((100_000,), None, "float32"), ((2, 100_000), 1, "float32"), ((100_000, 3), 0, "float64"),
               ((100_000,), -1, "float16"), ((3, 50_000, 2), (1, 2), "float64"), ((10_007,), 0, "float64")]


@pytest.mark.parametrize("shape,axis,dtype_name", LARGE_CASES, ids=[f"{s}-ax{a}-{d}" for s, a, d in LARGE_CASES])
def test_large_n(xp, small_tiles, shape, axis, dtype_name):
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    # a few extreme entries, far apart, so that different blocks hold the max
    flat = x.reshape(-1)
    flat[17] = 40
    flat[-3] = 41
    tiles = 7 if shape == (10_007,) else None
    with tile_elements(tiles):
        xs = to_xp(xp, x)
        for fname, (fn, log) in FUNCS.items():
            assert_close(fn(xs, axis=axis), ref_softmax(x, axis, log), dtype, KIND[fname], what=fname)
        assert_close(cs.logsumexp(xs, axis=axis), ref_logsumexp(x, axis=axis), dtype)
        b = rng.uniform(0, 1, shape)
        assert_close(cs.logsumexp(xs, axis=axis, b=to_xp(xp, b)), ref_logsumexp(x, axis=axis, b=b),
                     np.float64)


# ---------------------------------------------------------------------------
# Sizes around every kernel threshold, aligned and misaligned
# ---------------------------------------------------------------------------

SWEEP_N = [1, 2, 31, 32, 33, 255, 257, 1000, 1023, 1024, 1025, 2047, 2049, 4097, 8193, 16385, 65537, 262147]


def _laid_out(xp, x_np, layout):
    """x_np on the backend: C-contiguous, contiguous but starting one element off
    (no 16-byte alignment), or rows with a padded stride."""
    if layout == "contiguous":
        return to_xp(xp, x_np)
    if layout == "offset1":
        buf = xp.zeros(x_np.size + 1, x_np.dtype)
        buf[1:] = to_xp(xp, x_np.reshape(-1))
        return buf[1:].reshape(x_np.shape)
    padded = xp.zeros(x_np.shape[:-1] + (x_np.shape[-1] + 1,), x_np.dtype)
    padded[..., 1:] = to_xp(xp, x_np)
    return padded[..., 1:]


@pytest.mark.parametrize("n", SWEEP_N)
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype_name", dtype_params(["float32", "float16", "float64", "bfloat16"]))
@pytest.mark.parametrize("layout", ["contiguous", "offset1", "padded"])
def test_size_sweep_rows(xp, n, rows, dtype_name, layout):
    """Reduced axis last: short rows in a warp, long rows over blocks and split rows."""
    if layout != "contiguous" and dtype_name in ("float64", "bfloat16") and n > 5000:
        pytest.skip("covered by float32/float16 at this size")
    dtype = dtype_of(dtype_name)
    x_np = data((rows, n), dtype, seed=n % 97, scale=5.0)
    x_np[0, n // 2] = 12  # one large entry mid-row
    x = _laid_out(xp, x_np, layout)
    for fname, (fn, log) in FUNCS.items():
        out = fn(x, axis=-1)
        assert_close(out, ref_softmax(x_np, -1, log), dtype, KIND[fname], what=f"{fname} n={n}")
    assert_close(cs.logsumexp(x, axis=-1), ref_logsumexp(x_np, axis=-1), logsumexp_dtype(x_np))


@pytest.mark.parametrize("n", [1, 2, 31, 33, 257, 1025, 4097, 65537])
@pytest.mark.parametrize("cols", [1, 3, 37])
@pytest.mark.parametrize("dtype_name", dtype_params(["float32", "float16", "float64"]))
@pytest.mark.parametrize("layout", ["contiguous", "padded"])
def test_size_sweep_columns(xp, n, cols, dtype_name, layout):
    """Reduced axis first (a column reduction over a C-contiguous array)."""
    dtype = dtype_of(dtype_name)
    x_np = data((n, cols), dtype, seed=n % 89 + cols, scale=5.0)
    x_np[n // 2, 0] = 12
    x = _laid_out(xp, x_np, layout)
    for fname, (fn, log) in FUNCS.items():
        out = fn(x, axis=0)
        assert_close(out, ref_softmax(x_np, 0, log), dtype, KIND[fname], what=f"{fname} n={n}")
    assert_close(cs.logsumexp(x, axis=0), ref_logsumexp(x_np, axis=0), logsumexp_dtype(x_np))


# ---------------------------------------------------------------------------
# Inputs are never modified
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype_name", dtype_params(["float64", "float32", "float16", "bfloat16"]))
def test_inputs_not_modified(xp, tiles, dtype_name):
    dtype = dtype_of(dtype_name)
    x_np = special_rows(dtype)
    b_np = np.random.default_rng(2).uniform(-1, 1, x_np.shape).astype(dtype)
    for make in (lambda a: a, lambda a: a[:, ::-1], lambda a: a.T):
        x, b = make(to_xp(xp, x_np.copy())), make(to_xp(xp, b_np.copy()))
        x0, b0 = asnumpy(x).copy(), asnumpy(b).copy()
        cs.softmax(x, axis=1)
        cs.log_softmax(x)
        cs.logsumexp(x, axis=0, b=b, return_sign=True)
        cs.logsumexp(x)
        state = cs.partial_state(x, axis=1, b=b)
        cs.softmax_from_state(x, cs.partial_state(x, axis=1), axis=1)
        cs.log_softmax_from_state(x, cs.partial_state(x, axis=1), axis=1)
        m0, s0 = asnumpy(state.max).copy(), asnumpy(state.sum).copy()
        cs.merge_states(state, state)
        cs.state_logsumexp(state, return_sign=True)
        assert same_bytes(x, x0) and same_bytes(b, b0)
        assert same_bytes(state.max, m0) and same_bytes(state.sum, s0)


def test_zero_d_input_not_modified(xp):
    x = to_xp(xp, np.array(2.5))
    cs.softmax(x)
    cs.log_softmax(x)
    cs.logsumexp(x)
    assert float(asnumpy(x)) == 2.5


# ---------------------------------------------------------------------------
# Dispatch and errors
# ---------------------------------------------------------------------------

class ArrayAPIObject:
    """Some other library's array: has __array_namespace__, is not NumPy/CuPy."""

    def __init__(self):
        self.shape, self.ndim, self.dtype = (3,), 1, np.dtype(np.float64)

    def __array_namespace__(self, api_version=None):
        raise AssertionError("must not be used")


class DLPackObject:
    def __dlpack__(self, stream=None):
        raise AssertionError("must not be used")

    def __dlpack_device__(self):
        return (1, 0)


def _call_all(x):
    """Every public entry point with x as the data argument."""
    state = cs.partial_state(np.ones(3))
    return [
        lambda: cs.softmax(x), lambda: cs.log_softmax(x), lambda: cs.logsumexp(x),
        lambda: cs.partial_state(x), lambda: cs.softmax_from_state(x, state),
        lambda: cs.log_softmax_from_state(x, state),
        lambda: cs.logsumexp(np.ones(3), b=x), lambda: cs.partial_state(np.ones(3), b=x),
    ]


@pytest.mark.parametrize("factory", [ArrayAPIObject, DLPackObject], ids=["array_namespace", "dlpack"])
def test_foreign_array_types_raise(factory):
    for call in _call_all(factory()):
        with pytest.raises(TypeError, match=factory.__name__):
            call()


def test_foreign_state_raises():
    good = cs.partial_state(np.ones(3))
    bad = cs.SoftmaxState(ArrayAPIObject(), DLPackObject())
    for call in (lambda: cs.merge_states(good, bad), lambda: cs.state_logsumexp(bad)):
        with pytest.raises(TypeError, match="ArrayAPIObject|DLPackObject"):
            call()


def test_torch_tensor_raises():
    torch = pytest.importorskip("torch")
    for call in _call_all(torch.ones(3)):
        with pytest.raises(TypeError, match="Tensor"):
            call()


def test_mixing_numpy_and_cupy_raises():
    if CUPY is None:
        pytest.skip("needs cupy with a GPU")
    with pytest.raises(TypeError):
        cs.logsumexp(CUPY.ones(3), b=np.ones(3))
    with pytest.raises(TypeError):
        cs.logsumexp(np.ones(3), b=CUPY.ones(3))


def test_cupy_in_cupy_out():
    if CUPY is None:
        pytest.skip("needs cupy with a GPU")
    x = CUPY.asarray(data((4, 5), np.float32))
    for out in (cs.softmax(x, axis=1), cs.log_softmax(x), cs.logsumexp(x, axis=0), cs.logsumexp(x),
                *cs.partial_state(x)):
        assert isinstance(out, CUPY.ndarray)


def test_numpy_in_numpy_out():
    x = data((4, 5), np.float32)
    for out in (cs.softmax(x, axis=1), cs.log_softmax(x), cs.logsumexp(x, axis=0), *cs.partial_state(x)):
        assert type(out) is np.ndarray


AXIS_ERRORS = [
    ((0, 0), ValueError), ((1, -1), ValueError), ((0, -2), ValueError),
    (2, np.exceptions.AxisError), (-3, np.exceptions.AxisError), ((0, 5), np.exceptions.AxisError),
    (1.5, TypeError), ("1", TypeError), ((0, 1.0), TypeError), (1.0, TypeError),
]


@pytest.mark.parametrize("axis,exc", AXIS_ERRORS, ids=[repr(a) for a, _ in AXIS_ERRORS])
def test_bad_axis(xp, axis, exc):
    x = to_xp(xp, np.ones((2, 3)))
    calls = {
        "softmax": lambda: cs.softmax(x, axis=axis),
        "log_softmax": lambda: cs.log_softmax(x, axis=axis),
        "logsumexp": lambda: cs.logsumexp(x, axis=axis),
        "logsumexp-b": lambda: cs.logsumexp(x, axis=axis, b=x),
        "partial_state": lambda: cs.partial_state(x, axis=axis),
    }
    if not isinstance(axis, tuple):
        state = cs.partial_state(x, axis=-1)
        calls["softmax_from_state"] = lambda: cs.softmax_from_state(x, state, axis=axis)
        calls["log_softmax_from_state"] = lambda: cs.log_softmax_from_state(x, state, axis=axis)
    for name, call in calls.items():
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        if exc is ValueError:
            assert re.search("axis|duplicate", msg), (name, msg)
        elif exc is np.exceptions.AxisError:
            assert "out of bounds" in msg or "axis" in msg, (name, msg)
        else:
            assert re.search(r"integer|axis|index", msg), (name, msg)


def test_axis_errors_match_scipy_types():
    """Where scipy rejects an axis, ours raises the same exception type."""
    x = np.ones((2, 3))
    for axis, exc in AXIS_ERRORS:
        for fname in ("softmax", "log_softmax", "logsumexp"):
            with pytest.raises(exc):
                getattr(sps, fname)(x, axis=axis)
            with pytest.raises(exc):
                getattr(cs, fname)(x, axis=axis)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3), (4,)), ((2, 3), (3, 2)), ((3,), (2, 2))])
def test_b_does_not_broadcast(xp, a_shape, b_shape):
    a, b = to_xp(xp, np.ones(a_shape)), to_xp(xp, np.ones(b_shape))
    for call in (lambda: cs.logsumexp(a, b=b), lambda: cs.logsumexp(a, b=b, axis=0),
                 lambda: cs.partial_state(a, b=b)):
        with pytest.raises(ValueError, match=r"(?i)broadcast|shape"):
            call()


BAD_DTYPES = [np.array([1, 2], dtype=object), np.array(["a", "b"]), np.array([b"a", b"b"]),
              np.array(["2020-01-01"], dtype="datetime64[D]"), np.array([1], dtype="timedelta64[s]")]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda a: str(a.dtype))
def test_unsupported_dtype(bad):
    dtype_text = re.escape(str(bad.dtype))
    for call in _call_all(bad):
        with pytest.raises(TypeError, match=rf"{dtype_text}|dtype"):
            call()


def test_list_of_strings_raises():
    for fname in ("softmax", "log_softmax", "logsumexp"):
        with pytest.raises(TypeError):
            getattr(cs, fname)(["a", "b"])


def test_no_warnings_of_any_kind_and_errstate_untouched(xp):
    """All the non-finite cases with every warning an error; numpy's errstate unchanged."""
    x = to_xp(xp, special_rows(np.float64))
    b = to_xp(xp, np.where(np.arange(75).reshape(15, 5) % 3 == 0, 0.0, -1.5))
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for axis in (None, 0, 1):
            cs.softmax(x, axis=axis)
            cs.log_softmax(x, axis=axis)
            cs.logsumexp(x, axis=axis)
            cs.logsumexp(x, axis=axis, b=b)
            cs.logsumexp(x, axis=axis, b=b, return_sign=True)
        st = cs.partial_state(x, axis=1, b=b)
        cs.state_logsumexp(st)
        cs.state_logsumexp(st, return_sign=True)
        st = cs.partial_state(x, axis=1)
        cs.softmax_from_state(x, st, axis=1)
        cs.log_softmax_from_state(x, st, axis=1)
        cs.merge_states(st, cs.partial_state(x[:, :0], axis=1))
        cs.logsumexp(to_xp(xp, np.zeros((3, 0))), axis=1, return_sign=True)
        cs.logsumexp(to_xp(xp, np.array([-np.inf + 0j, np.nan + 1j])))
    assert np.geterr() == before
