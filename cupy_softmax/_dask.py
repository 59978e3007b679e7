"""Dask arrays: the public functions on chunked NumPy or CuPy data, lazily.

A reduction over chunked axes is one ``dask.array.reduction`` whose partial
results are the library's states: every chunk gives ``partial_state`` (our
kernels on CuPy chunks, the NumPy path on NumPy chunks), ``merge_states``
combines them in a tree whose fan-in follows ``split_every`` (from
``dask.config``), and the aggregate finalises.  softmax over chunked axes is
that reduction followed by one ``map_blocks`` normalisation; over axes that lie
within single chunks it is one ``map_blocks`` of the in-memory function.

Imported only when a Dask array reaches the public functions.
"""

import functools

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from . import _api
from ._api import SoftmaxState
from ._layout import normalize_axes
from ._numpy_backend import accumulation_dtype


def _flat(nested):
    if isinstance(nested, dict):
        yield nested
    else:
        for item in nested:
            yield from _flat(item)


# dask finds the metadata of each layer by calling its function on empty arrays
# with computing_meta=True; the partials are dicts, so the input stands in for them.

def _chunk_state(x, weights=None, axis=None, keepdims=True, computing_meta=False):
    if computing_meta:
        return x
    state = _api.partial_state(x, axis=axis, b=weights)
    shape = tuple(1 if ax in axis else size for ax, size in enumerate(x.shape))
    return {field: value.reshape(shape) for field, value in state._asdict().items()}


def _merged(pairs):
    return _api.merge_states(*(SoftmaxState(**pair) for pair in _flat(pairs)))


def _combine(pairs, axis=None, keepdims=True, computing_meta=False):
    return pairs if computing_meta else _merged(pairs)._asdict()


def _aggregate(pairs, axis=None, keepdims=False, finalise=None, computing_meta=False):
    if computing_meta:
        return pairs
    result = finalise(_merged(pairs))
    return result if keepdims else result.reshape(
        tuple(size for ax, size in enumerate(result.shape) if ax not in axis))


def _reduce(x, axes, b, keepdims, finalise, dtype):
    """One output of the state reduction; equal calls share their chunk and combine tasks."""
    return da.reduction(
        x, _chunk_state, functools.partial(_aggregate, finalise=finalise), axis=axes,
        keepdims=keepdims, dtype=dtype, combine=_combine, concatenate=False,
        name="cupy_softmax-state", meta=meta_from_array(x, x.ndim - (0 if keepdims else len(axes)),
                                                       dtype=dtype),
        weights=b)


def _prepare(a, b, axis):
    a_array, b_array = da.asarray(a), None if b is None else da.asarray(b)
    dtype = _api._logsumexp_dtype(((a, a_array), (b, b_array)))
    a, b = a_array, b_array
    if a.ndim == 0:
        a = a.reshape(1)
    if b is not None:
        if b.ndim > a.ndim or any(sb not in (1, sa) for sa, sb in zip(a.shape[::-1], b.shape[::-1])):
            raise ValueError(f"b of shape {b.shape} does not broadcast against a of shape {a.shape}")
    return a.astype(dtype), None if b is None else b.astype(dtype), normalize_axes(axis, a.ndim), dtype


def _state_field(field):
    return lambda state: getattr(state, field)


def _lse_field(index):
    return lambda state: _api.state_logsumexp(state, return_sign=True)[index]


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    a, b, axes, dtype = _prepare(a, b, axis)
    if not return_sign:
        return _reduce(a, axes, b, keepdims, _api.state_logsumexp, dtype)
    real = np.empty(0, dtype).real.dtype
    return (_reduce(a, axes, b, keepdims, _lse_field(0), real),
            _reduce(a, axes, b, keepdims, _lse_field(1), dtype))


def partial_state(x, axis=-1, b=None):
    x, b, axes, dtype = _prepare(x, b, axis)
    acc = accumulation_dtype(dtype)
    real = np.empty(0, acc).real.dtype
    return SoftmaxState(_reduce(x, axes, b, False, _state_field("max"), real),
                        _reduce(x, axes, b, False, _state_field("sum"), acc))


def _softmax(x, axis, log):
    x = da.asarray(x)
    one_shot = _api.log_softmax if log else _api.softmax
    dtype = _api._softmax_dtype(x.dtype)
    shape = x.shape
    x = x.reshape(1) if x.ndim == 0 else x
    axes = normalize_axes(axis, x.ndim)
    if all(x.numblocks[ax] == 1 for ax in axes):
        out = x.map_blocks(functools.partial(one_shot, axis=axes), dtype=dtype)
    else:
        state = partial_state(x, axis=axes)
        out = _from_state(x, state, axes, log)
    return out.reshape(shape)


def softmax(x, axis=None):
    return _softmax(x, axis, log=False)


def log_softmax(x, axis=None):
    return _softmax(x, axis, log=True)


def _block_from_state(x, m, s, axes, log):
    # m and s arrive broadcast to the block's shape; one slice across the reduced axes is the state.
    kept = tuple(0 if ax in axes else slice(None) for ax in range(x.ndim))
    state = SoftmaxState(m[kept], s[kept])
    return (_api.log_softmax_from_state if log else _api.softmax_from_state)(x, state, axis=axes)


def _from_state(x, state, axis, log):
    x = da.asarray(x)
    axes = normalize_axes(axis, x.ndim)
    kept = tuple(size for ax, size in enumerate(x.shape) if ax not in axes)
    keep_shape = tuple(1 if ax in axes else size for ax, size in enumerate(x.shape))
    fields = []
    for field in state:
        field = da.asarray(field)
        if field.shape != kept:
            raise ValueError(f"state of shape {field.shape} does not match x of shape {x.shape} "
                             f"reduced over axis {axis}: expected {kept}")
        fields.append(da.broadcast_to(field.reshape(keep_shape), x.shape, chunks=x.chunks))
    return da.map_blocks(functools.partial(_block_from_state, axes=axes, log=log), x, *fields,
                         dtype=_api._softmax_dtype(x.dtype))


def softmax_from_state(x, state, axis=-1):
    return _from_state(x, state, axis, log=False)


def log_softmax_from_state(x, state, axis=-1):
    return _from_state(x, state, axis, log=True)


def _elementwise_on_states(states, fn, dtype):
    fields = [da.asarray(field) for state in states for field in state]
    return da.map_blocks(lambda *blocks: fn([SoftmaxState(*blocks[k:k + 2])
                                             for k in range(0, len(blocks), 2)]),
                         *fields, dtype=dtype)


def merge_states(*states):
    if not states:
        raise TypeError("merge_states needs at least one state")
    states = [SoftmaxState(*(da.asarray(field) for field in state)) for state in states]
    real = np.result_type(*(state.max.dtype for state in states))
    acc = np.result_type(*(state.sum.dtype for state in states))
    return SoftmaxState(
        _elementwise_on_states(states, lambda parts: _api.merge_states(*parts).max, real),
        _elementwise_on_states(states, lambda parts: _api.merge_states(*parts).sum, acc))


def state_logsumexp(state, return_sign=False):
    state = SoftmaxState(*(da.asarray(field) for field in state))
    if not return_sign:
        return _elementwise_on_states([state], lambda parts: _api.state_logsumexp(parts[0]),
                                      state.sum.dtype)
    return (_elementwise_on_states([state], lambda parts: _lse_field(0)(parts[0]),
                                   state.max.dtype),
            _elementwise_on_states([state], lambda parts: _lse_field(1)(parts[0]),
                                   state.sum.dtype))
