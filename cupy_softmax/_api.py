"""The public functions: validation and dispatch here, arithmetic in the backends."""

import functools
from typing import Any, NamedTuple

import numpy as np

from . import _alloc, _dispatch, _numpy_backend
from ._layout import Canonical, normalize_axes
from ._numpy_backend import accumulation_dtype

__all__ = ["softmax", "log_softmax", "logsumexp", "SoftmaxState", "partial_state",
           "merge_states", "state_logsumexp", "softmax_from_state", "log_softmax_from_state"]

_PY_SCALARS = (bool, int, float, complex)


def _dask_aware(fn):
    """Route calls holding a Dask array to the same-named function of ``_dask``."""
    @functools.wraps(fn)
    def dispatching(*args, **kwargs):
        if _dispatch.holds_dask(*args, *kwargs.values()):
            from . import _dask
            return getattr(_dask, fn.__name__)(*args, **kwargs)
        return fn(*args, **kwargs)
    return dispatching


def _is_bfloat16(dtype):
    return dtype.name == "bfloat16"


def _as_array(x, xp, name):
    x = xp.asarray(x)
    if x.dtype.kind not in "biufc" and not _is_bfloat16(x.dtype):
        raise TypeError(f"{name} has unsupported dtype {x.dtype}; expected a real or complex number type")
    return x


def _softmax_dtype(dtype):
    """NumPy's rule for ``exp``: ints and bools become the smallest float that holds them."""
    if dtype.kind in "biu":
        return np.result_type(dtype, np.float16)
    return dtype


def _logsumexp_dtype(pairs):
    """``result_type(a, b, 1.0)`` from (given, as array) pairs, with Python scalars weak as in NumPy 2.

    bfloat16 promotes as float16 does (so a Python float keeps it), and the two
    16-bit types together give float32.
    """
    args = [given if isinstance(given, _PY_SCALARS) else array.dtype
            for given, array in pairs if given is not None]
    bfloat16 = [arg for arg in args if isinstance(arg, np.dtype) and _is_bfloat16(arg)]
    if not bfloat16:
        return np.result_type(*args, 1.0)
    as_half = [np.dtype(np.float16) if arg in bfloat16 else arg for arg in args]
    result = np.result_type(*as_half, 1.0)
    if result != np.float16:
        return result
    return np.dtype(np.float32) if np.dtype(np.float16) in args else bfloat16[0]


def _backend_for(dtype, backend):
    # Complex numbers have no kernel: they run the blocked code on the input's own arrays.
    return _numpy_backend if dtype.kind == "c" else backend


def _real_dtype(dtype):
    return np.empty(0, dtype).real.dtype


def _weighted_layout(a, b, axis, xp):
    """Shared prelude of logsumexp and partial_state: arrays, dtype and layout."""
    a_array = _as_array(a, xp, "a")
    b_array = None if b is None else _as_array(b, xp, "b")
    dtype = _logsumexp_dtype(((a, a_array), (b, b_array)))
    a, b = a_array, b_array
    if b is not None:
        try:
            a, b = xp.broadcast_arrays(a, b)
        except ValueError:
            raise ValueError(f"b of shape {b.shape} does not broadcast against a of shape "
                             f"{a.shape}") from None
    # Like scipy, a 0-d input is a 1-d array of one element.
    if a.ndim == 0:
        a = a.reshape(1)
        b = None if b is None else b.reshape(1)
    layout = Canonical(a.astype(dtype, copy=False), normalize_axes(axis, a.ndim))
    b3 = None if b is None else layout.view3(b.astype(dtype, copy=False))
    return layout, b3, dtype


@_dask_aware
def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    r"""Compute the log of the sum of exponentials of input elements.

    .. math:: \mathrm{logsumexp}(a) = \log \sum_i b_i e^{a_i}
              = m + \log \sum_i b_i e^{a_i - m}, \qquad m = \max_i a_i

    computed in one pass by the online normalizer: the reduced elements are
    walked in blocks, each block gives a state ``(m, s)`` and the states merge
    exactly (see `partial_state`).  The signature, defaults, result dtype
    (``result_type(a, b, 1.0)``) and edge cases are those of
    `scipy.special.logsumexp`.

    Parameters
    ----------
    a : array_like
        Input array: NumPy (or anything NumPy converts) runs on the CPU, a
        CuPy array runs our CUDA kernels and gives a CuPy result.
    axis : None or int or tuple of ints, optional
        Axis or axes to reduce.  By default all of them.
    b : array_like, optional
        Weights for ``exp(a)``, broadcastable with `a`; may be negative.  An
        element with ``b == 0`` is left out even where `a` is inf or NaN.
    keepdims : bool, optional
        Keep the reduced axes as dimensions of size one.
    return_sign : bool, optional
        Also return the sign of the sum; without it, a negative sum gives NaN.

    Returns
    -------
    res : ndarray or scalar
        ``log(abs(sum(b * exp(a))))`` along `axis`; -inf where the sum is 0 or
        empty, +inf where it holds +inf, NaN where it holds NaN.  For complex
        input the imaginary part lies in (-pi, pi].
    sgn : ndarray or scalar
        With ``return_sign=True``: +1, 0 or -1 (a unit complex number for
        complex input).

    Notes
    -----
    Where the reduced extent is empty, the sign is 0 (an empty sum is zero);
    scipy reports -1 there.  16-bit floats are accumulated in float32.
    Complex input on the GPU runs a slower path composed of CuPy operations.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import logsumexp
    >>> float(logsumexp(np.arange(10.0)))
    9.45862974442671
    >>> logsumexp([1, 2], b=[1, -1], return_sign=True)
    (np.float64(1.5413248546129181), np.float64(-1.0))
    >>> logsumexp([[0.0, -np.inf], [np.inf, 1.0]], axis=1)
    array([ 0., inf])
    """
    xp, backend = _dispatch.namespace(a, b)
    layout, b3, dtype = _weighted_layout(a, b, axis, xp)
    backend = _backend_for(dtype, backend)
    out_dtype = _real_dtype(dtype) if return_sign else dtype
    out = _alloc.empty((layout.outer, layout.inner), out_dtype, xp)
    sign = _alloc.empty((layout.outer, layout.inner), dtype, xp) if return_sign else None
    if layout.n == 0:
        out[...] = -np.inf
        if sign is not None:
            sign[...] = 0
    elif out.size:
        backend.logsumexp(layout.x3, b3, out, sign)
    shape = layout.reduced_shape(keepdims)
    out = out.reshape(shape)[()]
    return (out, sign.reshape(shape)[()]) if return_sign else out


def _softmax(x, axis, log):
    xp, backend = _dispatch.namespace(x)
    x = _as_array(x, xp, "x")
    dtype = _softmax_dtype(x.dtype)
    # NumPy's reductions accept axis 0 and -1 on a 0-d array, and so does scipy.
    x1 = x.reshape(1) if x.ndim == 0 else x
    layout = Canonical(x1.astype(dtype, copy=False), normalize_axes(axis, x1.ndim))
    out3 = _alloc.empty(layout.x3.shape, dtype, xp)
    if out3.size:
        _backend_for(dtype, backend).softmax(layout.x3, out3, log)
    return layout.restore(out3, xp).reshape(x.shape)[()]


@_dask_aware
def softmax(x, axis=None):
    r"""Compute the softmax function.

    .. math:: \sigma(x)_j = \frac{e^{x_j}}{\sum_k e^{x_k}}
              = \frac{e^{x_j - m}}{s}, \qquad m = \max_k x_k,\;
              s = \sum_k e^{x_k - m}

    The state ``(m, s)`` is found in one blocked pass and the output written in
    a second pass over data still in cache.  Same signature, default (`axis`
    None: the whole array), result dtype and results as
    `scipy.special.softmax`: a slice holding +inf or NaN, or only -inf, is all
    NaN.

    Parameters
    ----------
    x : array_like
        Input array; a CuPy array runs our CUDA kernels.
    axis : int or tuple of ints, optional
        Axis or axes to normalise over.  By default the whole array.

    Returns
    -------
    s : ndarray or scalar
        Same shape as `x`; sums to 1 along `axis`.  Integer and bool input
        gives the float dtype NumPy's ``exp`` gives (int8 gives float16).

    Notes
    -----
    Where scipy fails, this returns the mathematically right result: an empty
    array (or empty `axis`) gives an empty result instead of a ValueError, and
    small integer types are converted before subtracting instead of wrapping
    around.  16-bit floats are stored as such and computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import softmax
    >>> softmax(np.array([1.0, 2.0, 3.0]))
    array([0.09003057, 0.24472847, 0.66524096])
    >>> softmax(np.array([[1.0, 1.0], [0.0, np.log(3.0)]]), axis=1)
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    """
    return _softmax(x, axis, log=False)


@_dask_aware
def log_softmax(x, axis=None):
    r"""Compute the logarithm of the softmax function.

    .. math:: \log\sigma(x)_j = (x_j - m) - \log s, \qquad m = \max_k x_k,\;
              s = \sum_k e^{x_k - m}

    More accurate than ``log(softmax(x))`` where softmax underflows.  Same
    signature, default, result dtype and results as
    `scipy.special.log_softmax`: a slice holding +inf gives -inf (NaN at the
    +inf entries), one holding NaN or only -inf gives NaN.

    Parameters
    ----------
    x : array_like
        Input array; a CuPy array runs our CUDA kernels.
    axis : int or tuple of ints, optional
        Axis or axes to normalise over.  By default the whole array.

    Returns
    -------
    s : ndarray or scalar
        Same shape as `x`; ``exp`` of it sums to 1 along `axis`.

    Notes
    -----
    An empty array gives an empty result where scipy raises ValueError.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import log_softmax
    >>> log_softmax(np.array([1000.0, 1.0]))
    array([   0., -999.])
    """
    return _softmax(x, axis, log=True)


class SoftmaxState(NamedTuple):
    r"""The online-normalizer state of a set of values, one per reduced slice.

    ``max`` is the largest value (-inf when there is none) and ``sum`` is
    :math:`\sum_i b_i e^{a_i - \mathrm{shift}}`, with the shift equal to
    ``max`` where it is finite and 0 elsewhere.  States of disjoint chunks
    merge exactly with `merge_states`; `state_logsumexp`, `softmax_from_state`
    and `log_softmax_from_state` finalise them.
    """

    max: Any
    sum: Any


@_dask_aware
def partial_state(x, axis=-1, b=None):
    r"""The (m, s) state of a chunk of data along `axis`.

    .. math:: m = \max_i a_i,\qquad s = \sum_i b_i e^{a_i - m}

    States of chunks that together make up the data merge, in any order, into
    the state of the whole (`merge_states`), which gives the log-sum-exp
    (`state_logsumexp`) and normalises each chunk (`softmax_from_state`).

    Parameters
    ----------
    x : array_like
        A chunk of the data (NumPy or CuPy).
    axis : None or int or tuple of ints, optional
        Axis or axes to summarise; default -1.
    b : array_like, optional
        Weights, as in `logsumexp`.

    Returns
    -------
    SoftmaxState
        ``max`` and ``sum`` arrays of `x`'s shape less the reduced axes, in
        float32 for 16-bit input and in ``result_type(x, b, 1.0)`` otherwise
        (``max`` real, ``sum`` complex for complex input).  A chunk of length 0
        gives ``max = -inf, sum = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import partial_state, merge_states, state_logsumexp, logsumexp
    >>> x = np.random.default_rng(0).normal(size=(4, 1000))
    >>> parts = [partial_state(chunk, axis=1) for chunk in np.array_split(x, 3, axis=1)]
    >>> np.allclose(state_logsumexp(merge_states(*parts)), logsumexp(x, axis=1))
    True
    """
    xp, backend = _dispatch.namespace(x, b)
    layout, b3, dtype = _weighted_layout(x, b, axis, xp)
    acc = accumulation_dtype(dtype)
    m = _alloc.empty((layout.outer, layout.inner), _real_dtype(acc), xp)
    s = _alloc.empty((layout.outer, layout.inner), acc, xp)
    if layout.n == 0:
        m[...], s[...] = -np.inf, 0
    elif m.size:
        _backend_for(dtype, backend).partial_state(layout.x3, b3, m, s)
    shape = layout.reduced_shape(keepdims=False)
    return SoftmaxState(m.reshape(shape), s.reshape(shape))


def _flat_state_parts(states, xp):
    states = [SoftmaxState(*state) for state in states]
    if not states:
        raise TypeError("merge_states needs at least one state")
    shape = xp.asarray(states[0].max).shape
    for state in states:
        for field in state:
            if xp.asarray(field).shape != shape:
                raise ValueError(f"cannot merge states of shapes {shape} and "
                                 f"{xp.asarray(field).shape}")
    real = np.result_type(*(xp.asarray(state.max).dtype for state in states))
    acc = np.result_type(*(xp.asarray(state.sum).dtype for state in states))
    m_parts = xp.stack([xp.asarray(state.max, real).reshape(-1) for state in states])
    s_parts = xp.stack([xp.asarray(state.sum, acc).reshape(-1) for state in states])
    return m_parts, s_parts, shape


@_dask_aware
def merge_states(*states):
    r"""Merge states of disjoint chunks into the state of their union.

    .. math:: m = \max_k m_k,\qquad s = \sum_k s_k e^{m_k - m}

    Exact up to rounding, so any order or tree of merges gives the same
    result to a few ulps.

    Parameters
    ----------
    *states : SoftmaxState
        One or more states of the same shape (from `partial_state` or earlier
        merges), all NumPy or all CuPy.

    Returns
    -------
    SoftmaxState

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import partial_state, merge_states, state_logsumexp
    >>> a, b = partial_state(np.array([1.0, 2.0])), partial_state(np.array([3.0]))
    >>> float(state_logsumexp(merge_states(a, b)))
    3.4076059644443806
    """
    xp, backend = _dispatch.namespace(*(field for state in states for field in state))
    m_parts, s_parts, shape = _flat_state_parts(states, xp)
    m = _alloc.empty(m_parts.shape[1:], m_parts.dtype, xp)
    s = _alloc.empty(s_parts.shape[1:], s_parts.dtype, xp)
    if m.size:
        _backend_for(s.dtype, backend).merge_states(m_parts, s_parts, m, s)
    return SoftmaxState(m.reshape(shape), s.reshape(shape))


@_dask_aware
def state_logsumexp(state, return_sign=False):
    r"""The log-sum-exp of a state: ``shift + log|s|``.

    Parameters
    ----------
    state : SoftmaxState
    return_sign : bool, optional
        Also return the sign of the sum, as `logsumexp` does.

    Returns
    -------
    res : ndarray or scalar
        In the state's dtype; same edge cases as `logsumexp`.
    sgn : ndarray or scalar
        With ``return_sign=True`` only.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import partial_state, state_logsumexp
    >>> float(state_logsumexp(partial_state(np.array([0.0, 0.0]))))
    0.6931471805599453
    """
    xp, backend = _dispatch.namespace(*state)
    m_parts, s_parts, shape = _flat_state_parts([state], xp)
    m, s = m_parts[0], s_parts[0]
    out = _alloc.empty(m.shape, m.dtype if return_sign else s.dtype, xp)
    sign = _alloc.empty(m.shape, s.dtype, xp) if return_sign else None
    if m.size:
        _backend_for(s.dtype, backend).state_logsumexp(m, s, out, sign)
    out = out.reshape(shape)[()]
    return (out, sign.reshape(shape)[()]) if return_sign else out


def _from_state(x, state, axis, log):
    xp, backend = _dispatch.namespace(x, *state)
    x = _as_array(x, xp, "x")
    dtype = _softmax_dtype(x.dtype)
    layout = Canonical(x.astype(dtype, copy=False), normalize_axes(axis, x.ndim))
    state = SoftmaxState(*(xp.asarray(field) for field in state))
    if state.max.shape != layout.kept_shape or state.sum.shape != layout.kept_shape:
        raise ValueError(f"state of shape {state.max.shape} does not match x of shape {x.shape} "
                         f"reduced over axis {axis}: expected {layout.kept_shape}")
    acc = accumulation_dtype(np.result_type(dtype, state.sum.dtype))
    m = xp.ascontiguousarray(state.max.astype(_real_dtype(acc), copy=False)).reshape(
        layout.outer, layout.inner)
    s = xp.ascontiguousarray(state.sum.astype(acc, copy=False)).reshape(layout.outer, layout.inner)
    out3 = _alloc.empty(layout.x3.shape, dtype, xp)
    if out3.size:
        _backend_for(np.result_type(dtype, acc), backend).normalize(layout.x3, m, s, out3, log)
    return layout.restore(out3, xp)[()]


@_dask_aware
def softmax_from_state(x, state, axis=-1):
    r"""Softmax of a chunk against the state of all the data.

    .. math:: \sigma_j = e^{x_j - m} / s

    Concatenating the results for every chunk gives `softmax` of the whole.

    Parameters
    ----------
    x : array_like
        A chunk of the data.
    state : SoftmaxState
        The merged state of all chunks, of `x`'s shape less `axis`.
    axis : int or tuple of ints, optional
        The axis the state summarises; default -1.

    Returns
    -------
    ndarray
        Same shape as `x`, in `softmax`'s result dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import partial_state, merge_states, softmax_from_state, softmax
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> left, right = x[:, :2], x[:, 2:]
    >>> state = merge_states(partial_state(left), partial_state(right))
    >>> out = np.concatenate([softmax_from_state(left, state), softmax_from_state(right, state)], 1)
    >>> np.allclose(out, softmax(x, axis=1))
    True
    """
    return _from_state(x, state, axis, log=False)


@_dask_aware
def log_softmax_from_state(x, state, axis=-1):
    r"""Log-softmax of a chunk against the state of all the data.

    .. math:: \log\sigma_j = (x_j - m) - \log s

    Parameters
    ----------
    x : array_like
        A chunk of the data.
    state : SoftmaxState
        The merged state of all chunks, of `x`'s shape less `axis`.
    axis : int or tuple of ints, optional
        The axis the state summarises; default -1.

    Returns
    -------
    ndarray
        Same shape as `x`, in `log_softmax`'s result dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import partial_state, log_softmax_from_state
    >>> x = np.array([0.0, np.log(3.0)])
    >>> log_softmax_from_state(x, partial_state(x))
    array([-1.38629436, -0.28768207])
    """
    return _from_state(x, state, axis, log=True)
