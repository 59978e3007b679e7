"""Dask arrays of NumPy or CuPy chunks: lazy results equal to the in-memory ones.

References are scipy.special in float64 on the whole array.  The inputs are
float64, so the tolerance is float64's: rtol 1e-10 for values, and an absolute
1e-13 for results near zero, where (x - m) - log(s) carries an absolute error of
a few ulps of max(|x - m|, log s).
"""

import numpy as np
import pytest
import scipy.special as sps
from hypothesis import given
from hypothesis import strategies as st

from _helpers import asnumpy, is_cupy, quiet

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import cupy_softmax as cs  # noqa: E402

RTOL, ATOL = 1e-10, 1e-13


def _dask_array(xp, x, chunks):
    return da.from_array(xp.asarray(x), chunks=chunks, asarray=False)


def _reference(name, x, **kwargs):
    with quiet():
        return getattr(sps, name)(x, **kwargs)


def _check(actual, desired):
    assert isinstance(actual, da.Array)
    computed = asnumpy(actual.compute())
    np.testing.assert_allclose(computed, desired, rtol=RTOL, atol=ATOL)
    return computed


def _data(seed=0, shape=(6, 50, 7)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 30
    x[0, 3] = -np.inf  # an all -inf slice along the last axis
    x[2, ..., 1] = -np.inf  # and one along the others
    return x


AXES = [None, 0, 1, 2, -1, (0, 2), (1, 2), ()]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp(xp, axis, keepdims):
    x = _data()
    dx = _dask_array(xp, x, (2, 9, 3))
    _check(cs.logsumexp(dx, axis=axis, keepdims=keepdims), _reference('logsumexp', x, axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("axis", AXES)
def test_logsumexp_weights_and_sign(xp, axis):
    x = _data(1)
    b = np.random.default_rng(2).uniform(-1, 1, size=x.shape[1:])
    b[4, :] = 0
    dx = _dask_array(xp, x, (4, 13, 2))
    out, sign = cs.logsumexp(dx, axis=axis, b=_dask_array(xp, b, (13, 7)), return_sign=True)
    ref_out, ref_sign = _reference('logsumexp', x, axis=axis, b=b, return_sign=True)
    _check(out, ref_out)
    np.testing.assert_array_equal(asnumpy(sign.compute()), ref_sign)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_family(xp, axis, name):
    x = _data(3)
    dx = _dask_array(xp, x, (2, 9, 3))
    _check(getattr(cs, name)(dx, axis=axis), _reference(name, x, axis=axis))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_axis_within_one_chunk_is_one_map_blocks(xp, name):
    x = _data(4)
    dx = _dask_array(xp, x, (2, 50, 3))
    out = getattr(cs, name)(dx, axis=1)
    assert len(out.dask.layers) == len(dx.dask.layers) + 1  # one map_blocks on the input
    _check(out, _reference(name, x, axis=1))


def test_split_every_is_honoured(xp):
    x = _data(5, shape=(3, 400))
    dx = _dask_array(xp, x, (3, 10))
    default = cs.logsumexp(dx, axis=1)
    with dask.config.set(split_every=2):
        binary = cs.logsumexp(dx, axis=1)
    assert len(binary.dask.layers) > len(default.dask.layers)
    _check(binary, _reference('logsumexp', x, axis=1))
    _check(default, _reference('logsumexp', x, axis=1))


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_schedulers_agree(xp, scheduler):
    x = _data(6)
    dx = _dask_array(xp, x, (2, 7, 3))
    out = cs.softmax(dx, axis=(0, 1)).compute(scheduler=scheduler)
    np.testing.assert_allclose(asnumpy(out), _reference('softmax', x, axis=(0, 1)), rtol=RTOL, atol=ATOL)


def test_state_reduction_runs_once():
    dx = da.from_array(_data(7), chunks=(2, 9, 3))
    state = cs.partial_state(dx, axis=1)
    shared = set(state.max.dask.keys()) & set(state.sum.dask.keys())
    assert len(shared) >= len(state.max.dask) - state.max.npartitions - 1


def test_streaming_api(xp):
    x = _data(8)
    left, right = x[:, :20], x[:, 20:]
    states = [cs.partial_state(_dask_array(xp, part, (3, 6, 7)), axis=1) for part in (left, right)]
    merged = cs.merge_states(*states)
    assert isinstance(merged.max, da.Array)
    _check(cs.state_logsumexp(merged), _reference('logsumexp', x, axis=1))
    pieces = [cs.softmax_from_state(_dask_array(xp, part, (3, 6, 7)), merged, axis=1) for part in (left, right)]
    _check(da.concatenate(pieces, axis=1), _reference('softmax', x, axis=1))
    log_piece = cs.log_softmax_from_state(_dask_array(xp, left, (3, 6, 7)), merged, axis=1)
    _check(log_piece, _reference('log_softmax', x, axis=1)[:, :20])


def test_cupy_chunks_stay_on_the_gpu(xp):
    if not is_cupy(xp):
        pytest.skip("CuPy chunks only")
    dx = _dask_array(xp, _data(9), (2, 9, 3))
    assert isinstance(cs.softmax(dx, axis=1).compute(), xp.ndarray)
    assert isinstance(cs.logsumexp(dx, axis=1).compute(), xp.ndarray)


def test_errors():
    dx = da.ones((3, 4), chunks=2)
    with pytest.raises(ValueError, match="broadcast"):
        cs.logsumexp(dx, b=np.ones(3))
    with pytest.raises(ValueError, match="duplicate"):
        cs.softmax(dx, axis=(0, 0))
    with pytest.raises(np.exceptions.AxisError):
        cs.logsumexp(dx, axis=2)
    with pytest.raises(ValueError, match="state"):
        cs.softmax_from_state(dx, cs.partial_state(np.ones((4, 3))), axis=1)


@st.composite
def _chunked_problem(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, size)) for size in shape)
    axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                          st.lists(st.integers(0, ndim - 1), unique=True).map(tuple)))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1.0, 1e3, 1e300]))
    split_every = draw(st.sampled_from([2, 3, 8]))
    return shape, chunks, axis, seed, scale, split_every


@given(_chunked_problem())
def test_chunking_does_not_change_results(xp, problem):
    shape, chunks, axis, seed, scale, split_every = problem
    x = np.random.default_rng(seed).normal(size=shape) * scale
    dx = _dask_array(xp, x, chunks)
    with dask.config.set(split_every=split_every):
        for name in ("logsumexp", "softmax", "log_softmax"):
            expected = asnumpy(getattr(cs, name)(xp.asarray(x), axis=axis))
            actual = asnumpy(getattr(cs, name)(dx, axis=axis).compute())
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * max(1.0, scale))
