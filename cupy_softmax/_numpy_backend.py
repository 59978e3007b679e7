"""The blocked one-pass algorithm on host arrays (and, for complex input, on CuPy).

Work is cut into column tiles of the canonical (outer, n, inner) array: a few
outer rows by a few inner columns, spanning all of n.  Each tile walks n in
blocks of at most ``TILE_ELEMENTS`` elements; a block yields an (m, s) state
and the states merge with the online-normalizer rule of ``_state``.  Results
that need the final state (softmax, log_softmax) then walk the same tile a
second time, while it is still in cache.  Extra memory is a few blocks, never a
temporary of the input's size.

The functions take the same arguments as ``_cupy_backend``'s kernels and are
generic over the array namespace, so complex input on the GPU, which has no
kernel, runs this code on CuPy arrays.
"""

import sys

import numpy as np

from . import _state

TILE_ELEMENTS = 1 << 18
# Inner columns in one tile are capped so that, when the reduced axis is not the
# last, a block still covers many reduced positions and the per-block merge stays cheap.
_MIN_BLOCK_ROWS = 64


def _xp(x):
    return np if isinstance(x, np.ndarray) else sys.modules["cupy"]


def accumulation_dtype(dtype):
    """float32 for the 16-bit floats, the dtype itself otherwise."""
    dtype = np.dtype(dtype)
    if dtype == np.float16 or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    return dtype


def _sum_dtype(block):
    """float64 sums for float32 blocks reduced along a strided axis (more than one
    inner column): NumPy adds those term by term, and n terms would lose n ulps."""
    if block.shape[2] > 1 and block.dtype in (np.float32, np.complex64):
        return np.promote_types(block.dtype, np.float64)
    return None


def _merge_wide(state, part, xp):
    """Merge a block's state into the tile's running one, whose sum is kept in float64
    (complex128) for float32 (complex64) data: blocks merge one after the other, and a
    float32 running sum would lose up to an ulp per block."""
    m, s = part
    if s.dtype in (np.float32, np.complex64):
        s = s.astype(np.promote_types(s.dtype, np.float64))
    return (m, s) if state is None else _state.merge_pair(*state, m, s, xp=xp)


def _column_tiles(outer, n, inner):
    cols = min(inner, max(1, TILE_ELEMENTS // _MIN_BLOCK_ROWS))
    rows = max(1, min(n, TILE_ELEMENTS // cols))
    outers = max(1, min(outer, TILE_ELEMENTS // (rows * cols)))
    for o in range(0, outer, outers):
        for i in range(0, inner, cols):
            yield slice(o, o + outers), slice(i, i + cols), rows


def _blocks(n, rows):
    return (slice(j, j + rows) for j in range(0, n, rows))


def _tile_state(x3, b3, o, i, rows, acc, xp):
    """State of one column tile, shape (outers, 1, cols); n > 0 (the front end handles n == 0)."""
    state = None
    for j in _blocks(x3.shape[1], rows):
        block = x3[o, j, i].astype(acc, copy=False)
        weights = None if b3 is None else b3[o, j, i]
        part = _state.block_state(block, axis=1, b=weights, xp=xp, sum_dtype=_sum_dtype(block))
        state = _merge_wide(state, part, xp)
    return state


def _blocks_in_acc(x3, out3, o, i, rows, acc, xp):
    """(x block, output block, working array) for each block of a tile, in the accumulation dtype.

    The working array is the output block itself when the dtypes agree; 16-bit
    outputs get a float32 scratch block that the caller copies back.
    """
    for j in _blocks(x3.shape[1], rows):
        dest = out3[o, j, i]
        work = dest if dest.dtype == acc else xp.empty(dest.shape, acc)
        yield x3[o, j, i].astype(acc, copy=False), dest, work


def _write_partial(block, work, dest, log, xp, m_given=None):
    """Write ``exp(x - shift)`` (``x - shift`` for log) to the block's output; return (m, s).

    The shift is the block's own max, or ``m_given`` when normalising against a
    state already known (then s is not needed and is None).
    """
    if m_given is None and not log:
        state = _state.block_state(block, axis=1, xp=xp, terms=work, sum_dtype=_sum_dtype(block))
    else:
        state = (_state.block_state(block, axis=1, xp=xp, sum_dtype=_sum_dtype(block))
                 if m_given is None else (m_given, None))
        with np.errstate(invalid="ignore", over="ignore"):
            xp.subtract(block, _state.shift(state[0], xp), out=work)
            if not log:
                xp.exp(work, out=work)
    if work is not dest:
        with np.errstate(over="ignore"):  # a float32 value past the 16-bit range is rightly inf
            dest[...] = work
    return state


def _correct(dest, m_block, m, s, log, xp):
    with np.errstate(invalid="ignore", over="ignore"):
        if log:
            dest -= _state.log_softmax_block_offset(m_block, m, s, xp)
        else:
            dest *= _state.softmax_block_factor(m_block, m, s, xp)


def softmax(x3, out3, log):
    xp, acc = _xp(x3), accumulation_dtype(x3.dtype)
    for o, i, rows in _column_tiles(*x3.shape):
        blocks = []
        for block, dest, work in _blocks_in_acc(x3, out3, o, i, rows, acc, xp):
            blocks.append((dest, *_write_partial(block, work, dest, log, xp)))
        state = None
        for _, m_block, s_block in blocks:
            state = _merge_wide(state, (m_block, s_block), xp)
        m, s = state
        for dest, m_block, _ in blocks:
            _correct(dest, m_block, m, s, log, xp)


def normalize(x3, m, s, out3, log):
    xp, acc = _xp(x3), accumulation_dtype(x3.dtype)
    for o, i, rows in _column_tiles(*x3.shape):
        m_tile, s_tile = m[o, None, i], s[o, None, i]
        for block, dest, work in _blocks_in_acc(x3, out3, o, i, rows, acc, xp):
            _write_partial(block, work, dest, log, xp, m_given=m_tile)
            _correct(dest, m_tile, m_tile, s_tile, log, xp)


def partial_state(x3, b3, m, s):
    xp, acc = _xp(x3), accumulation_dtype(x3.dtype)
    for o, i, rows in _column_tiles(*x3.shape):
        m[o, i], s[o, i] = (part[:, 0, :] for part in _tile_state(x3, b3, o, i, rows, acc, xp))


def logsumexp(x3, b3, out, sign):
    xp, acc = _xp(x3), accumulation_dtype(x3.dtype)
    for o, i, rows in _column_tiles(*x3.shape):
        m, s = (part[:, 0, :] for part in _tile_state(x3, b3, o, i, rows, acc, xp))
        lse, sgn = _state.logsumexp_of(m, s, sign is not None, xp)
        out[o, i] = lse
        if sign is not None:
            sign[o, i] = sgn


def merge_states(m_parts, s_parts, m, s):
    m[...], s[...] = _state.merge(m_parts, s_parts, axis=0, xp=_xp(m_parts))


def state_logsumexp(m, s, out, sign):
    lse, sgn = _state.logsumexp_of(m, s, sign is not None, _xp(m))
    out[...] = lse
    if sign is not None:
        sign[...] = sgn
