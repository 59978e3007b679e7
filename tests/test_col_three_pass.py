"""The three-pass route of column softmax (col_stats, then col_normalize), forced.

The dispatcher takes it only when n is too long for the blocks of one slice to hold
the slice together (tens of thousands of rows); here ``_cupy_backend.TUNE`` forces it
on small problems, with every width of row a col_normalize block can cover (so that
blocks straddle the end of a row, or cover several rows' worth of a narrow one).  Each
case runs twice: the counters the stats leave behind must be zero again.  Also checked:
normalising columns against a given state (the streaming API), col_normalize alone;
logsumexp with col_stats' rows forced into chunks (the last block of a strip merges);
and, without CuPy, the rule that splits col_stats' columns into chunks and col_normalize's
grid.
"""

import numpy as np
import pytest

import cupy_softmax as cs
from _helpers import CUPY, CUPY_SKIP_REASON, assert_close, dtype_of, ref_softmax

needs_gpu = pytest.mark.skipif(CUPY is None, reason=str(CUPY_SKIP_REASON))

# (shape, axis, view): view slices the device array (misaligned / strided columns)
SHAPES = [
    ((301, 64), 0, None),           # one slice, vectors
    ((257, 1000), 0, None),         # many groups
    ((3, 190, 40), 1, None),        # several slices
    ((301, 33), 0, None),           # odd inner: scalar columns
    ((200, 66), 0, (slice(None), slice(1, 65))),          # misaligned columns
    ((120, 2, 48), 0, (slice(None), 0, slice(None))),     # strided rows
]
# bytes of a row that a col_normalize block covers
ROW_BYTES = [128, 512, 4096]


def _input(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    flat = x.reshape(shape[0], -1)
    flat[shape[0] // 2, 0] = 40      # a large entry
    if flat.shape[1] > 2:
        flat[:, 2] = -np.inf         # a column of -inf in the first slice
    return x


@needs_gpu
@pytest.mark.parametrize("waves", [None, 1e-9], ids=["table", "one_block"])
@pytest.mark.parametrize("row_bytes", ROW_BYTES)
@pytest.mark.parametrize("shape, axis, view", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16", "float64"])
def test_col_three_pass(dtype_name, shape, axis, view, row_bytes, waves, monkeypatch):
    """waves 1e-9: one col_normalize block takes every item in turn (its items share
    columns, or move on to the next strip or slice)."""
    from cupy_softmax import _cupy_backend
    dtype = dtype_of(dtype_name)
    x_np = _input(dtype, shape, sum(shape))
    x = CUPY.asarray(x_np)
    if view is not None:
        x_np, x = x_np[view], x[view]
    monkeypatch.setitem(_cupy_backend.TUNE, "three_pass", True)
    monkeypatch.setitem(_cupy_backend.TUNE, "norm_row_bytes", row_bytes)
    if waves is not None:
        monkeypatch.setitem(_cupy_backend.TUNE, "norm_waves", waves)
    with np.errstate(invalid="ignore"):
        ref_p = ref_softmax(x_np, axis, False)
        ref_l = ref_softmax(x_np, axis, True)
    for _ in range(2):
        assert_close(cs.softmax(x, axis=axis), ref_p, dtype, "prob", what=f"softmax {row_bytes}")
        assert_close(cs.log_softmax(x, axis=axis), ref_l, dtype, "log", what=f"log_softmax {row_bytes}")


@needs_gpu
@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_col_normalize_given_state(dtype_name):
    dtype = dtype_of(dtype_name)
    x_np = _input(dtype, (3, 77, 130), 5)
    x = CUPY.asarray(x_np)
    state = cs.partial_state(x, axis=1)
    with np.errstate(invalid="ignore"):
        ref_p = ref_softmax(x_np, 1, False)
        ref_l = ref_softmax(x_np, 1, True)
    assert_close(cs.softmax_from_state(x, state, axis=1), ref_p, dtype, "prob", what="from state")
    assert_close(cs.log_softmax_from_state(x, state, axis=1), ref_l, dtype, "log",
                 what="log from state")


@needs_gpu
@pytest.mark.parametrize("G", [2, 7, 40])
@pytest.mark.parametrize("shape, axis, view", SHAPES + [((1100, 64), 0, None)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "float64"])
def test_col_stats_split(dtype_name, shape, axis, view, G, monkeypatch):
    """logsumexp along a column axis with its rows split into G chunks (col_stats' last
    block of each strip merges the chunks' states), with weights and signs.  1100 rows
    and G 2: five passes of 256 rows dealt to two chunks."""
    from _helpers import logsumexp_dtype, ref_logsumexp
    from cupy_softmax import _cupy_backend
    dtype = dtype_of(dtype_name)
    x_np = _input(dtype, shape, sum(shape) + G)
    b_np = np.random.default_rng(G).standard_normal(shape).astype(dtype)
    x, b = CUPY.asarray(x_np), CUPY.asarray(b_np)
    if view is not None:
        x_np, x, b_np, b = x_np[view], x[view], b_np[view], b[view]
    monkeypatch.setitem(_cupy_backend.TUNE, "stats_G", G)
    rdtype = logsumexp_dtype(x_np)
    for _ in range(2):
        assert_close(cs.logsumexp(x, axis=axis), ref_logsumexp(x_np, axis=axis), rdtype)
        out, sign = cs.logsumexp(x, axis=axis, b=b, return_sign=True)
        ref, ref_sign = ref_logsumexp(x_np, axis=axis, b=b_np, return_sign=True)
        assert_close(out, ref, rdtype, what="weighted")
        assert_close(sign, ref_sign, rdtype, "sign", what="sign")


@pytest.mark.parametrize("groups, n, tune, plan", [
    (16, 32768, (), (16, 256)),       # f16 32768x1024 axis 0: 2 blocks of 8 passes an SM,
                                      # not 3 of 5-6 (G 24 would fill the 396 slots)
    (2, 262144, (), (132, 256)),      # 2 x 8 passes an SM, not 3 x 6 (G 198)
    (396, 32768, (), (1, 256)),       # strips enough to fill the GPU: unsplit
    (1, 100, (), (1, 100)),           # one pass: unsplit
    (1, 1000, (), (2, 256)),          # at least two passes a chunk
    (16, 10, (("stats_G", 4),), (4, 3)),
    (16, 9, (("stats_G", 4),), (3, 3)),   # units of cdiv(n, G) rows: fewer where they end early
])
def test_col_stats_plan(groups, n, tune, plan):
    """col_stats' chunks (no CuPy needed): float16 vectors, 32 threads along n (passes
    of 256 rows), 132 SMs, 396 blocks resident."""
    from cupy_softmax import _kernels
    assert _kernels.col_stats_plan(2, 8, False, 64, groups, n, 32, 132, 396, tune) == plan


@pytest.mark.parametrize("itemsize, items, tune, grid", [
    (2, 4096, (), 1056),              # f16 32768x1024 axis 0: two waves of 528 blocks
    (2, 1000, (), 1000),              # fewer items than two waves: a block an item
    (8, 4096, (), 1056),
    (4, 8192, (), 8192),              # float32: a block an item
    (4, 8192, (("norm_waves", 1e-9),), 1),    # one block takes every item
    (2, 4096, (("norm_waves", None),), 4096),
])
def test_col_normalize_grid(itemsize, items, tune, grid):
    """col_normalize's grid (no CuPy needed), 528 blocks resident."""
    from cupy_softmax import _kernels
    assert _kernels.col_normalize_grid(itemsize, items, 528, tune) == grid
