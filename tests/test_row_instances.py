"""Every row_softmax instance of the size table, on the GPU, in every role (and every
row_stats instance: elements a pass, as (sub-)warp rows, block rows and split rows).

The table picks one instance per row length, and test_special's size sweep runs 1 and
3 rows, so an instance would otherwise run only at the sizes that select it.  Here each
one is forced (``_cupy_backend.TUNE``) as a (sub-)warp per row and as a block per row
(or as the cluster it was built for), on 37 rows that end inside a vector or, for
clusters, inside the last block, with a large entry and a row of -inf; softmax,
log_softmax and the normalisation against a partial state are checked.  Also, without
CuPy, the rule that picks a row's route (a block, a cluster or split rows) and the one
that splits the streaming rows (row_stats) into chunks.
"""

import numpy as np
import pytest

import cupy_softmax as cs
from _helpers import CUPY, CUPY_SKIP_REASON, assert_close, dtype_of, ref_logsumexp, ref_softmax

needs_gpu = pytest.mark.skipif(CUPY is None, reason=str(CUPY_SKIP_REASON))

DTYPES = {4: ["float32"], 2: ["float16", "bfloat16"], 8: ["float64"]}
ROWS = 37


def _cases():
    from cupy_softmax import _kernels as K
    out = []
    for itemsize, names in DTYPES.items():
        for threads, ept, xch, hold in K._row_softmax_shapes(itemsize):
            chunk = threads * ept
            if xch >= 2:        # a cluster of xch blocks, the last one partly filled, aligned rows
                tunes = [({"row_entry": (threads, ept, xch)}, chunk * (xch - 1) + 8)]
            elif xch == 1:      # split rows exchanging through global memory: test_special's sizes
                continue
            else:               # a sub-warp / warp per row, and a block per row; rows
                # that start anywhere in a vector (contiguous rows of an odd length) cover
                # up to n + vec - 1 slots
                short = K.vec_width(itemsize) + 3
                tunes = [({"row_block": (threads, ept, 0, hold)}, min(32 * ept, chunk) - short),
                         ({"row_block": (threads, ept, threads, hold)}, chunk - short)]
            for name in names:
                for tune, n in tunes:
                    kind = next(iter(tune))
                    out.append(pytest.param(name, tune, n, id=f"{name}-{kind}-{tune[kind]}-n{n}"))
    return out


@needs_gpu
@pytest.mark.parametrize("dtype_name, tune, n", _cases())
def test_row_softmax_instance(dtype_name, tune, n, monkeypatch):
    from cupy_softmax import _cupy_backend, _kernels
    if "row_entry" in tune and not _kernels.has_clusters():
        pytest.skip("clusters need sm_90")
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(n)
    x_np = (rng.standard_normal((ROWS, n)) * 4).astype(dtype)
    x_np[1, n // 3] = 40            # one large entry
    x_np[2, :] = -np.inf            # a row with no finite entry
    x = CUPY.asarray(x_np)
    for key, value in tune.items():
        monkeypatch.setitem(_cupy_backend.TUNE, key, value)
    with np.errstate(invalid="ignore"):
        ref_p = ref_softmax(x_np, -1, False)
        ref_l = ref_softmax(x_np, -1, True)
    assert_close(cs.softmax(x, axis=-1), ref_p, dtype, "prob", what=f"softmax {tune}")
    assert_close(cs.log_softmax(x, axis=-1), ref_l, dtype, "log", what=f"log_softmax {tune}")
    st = cs.partial_state(x, axis=-1)
    assert_close(cs.softmax_from_state(x, st, axis=-1), ref_p, dtype, "prob",
                 what=f"softmax_from_state {tune}")


def _stats_cases():
    from cupy_softmax import _kernels as K
    out = []
    for itemsize, names in DTYPES.items():
        for epp in K.stats_epps(itemsize, K.vec_width(itemsize), False):
            for name in names:
                # rows of a (sub-)warp, one pass and several; block rows; split rows
                for rows, n, G in ((600, 125, 1), (600, 4099, 1), (3, 70001, 1), (3, 70001, 5)):
                    out.append(pytest.param(name, epp, rows, n, G, id=f"{name}-e{epp}-{rows}x{n}-G{G}"))
    return out


@needs_gpu
@pytest.mark.parametrize("dtype_name, epp, rows, n, G", _stats_cases())
def test_row_stats_instance(dtype_name, epp, rows, n, G, monkeypatch):
    from cupy_softmax import _cupy_backend
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(n + G)
    x_np = (rng.standard_normal((rows, n)) * 4).astype(dtype)
    x_np[1, n // 3] = 40            # one large entry
    x_np[2, :] = -np.inf            # a row with no finite entry
    x = CUPY.asarray(x_np)
    monkeypatch.setitem(_cupy_backend.TUNE, "stats_epp", epp)
    monkeypatch.setitem(_cupy_backend.TUNE, "stats_G", G)     # block rows: unsplit, or G chunks
    for _ in range(2):              # split rows: the counters must be zero again
        assert_close(cs.logsumexp(x, axis=-1), ref_logsumexp(x_np, axis=-1), dtype, "log",
                     what=f"logsumexp e{epp}")


@needs_gpu
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "float64"])
def test_row_vectors(dtype_name):
    """Contiguous rows of any length move in 16-byte vectors (rows off a 16-byte boundary
    cover up to vec - 1 more slots); softmax keeps them only where each input row starts
    as far from a boundary as its output row, logsumexp for any contiguous rows."""
    from cupy_softmax import _cupy_backend as B, _kernels as K
    dtype = dtype_of(dtype_name)
    vec = K.vec_width(np.dtype(dtype).itemsize)
    base = CUPY.zeros((3, 1025), dtype)
    for x, vec_softmax, vec_lse, span in [
            (CUPY.zeros((3, 1024), dtype), vec, vec, 1024),   # every row on a boundary
            (base.reshape(-1)[:3 * 1023].reshape(3, 1023), vec, vec, 1023 + vec - 1),
            (base[:, :1024], 1, vec, 1024 + vec - 1),    # stride 1025, output rows 1024
            (base[:, 1:], 1, vec, 1024 + vec - 1),       # rows one element off
            (base[:, ::2], 1, 1, 513)]:                   # strided rows
        x3 = x[:, :, None]
        assert B._row_vec(x3, CUPY.empty(x3.shape, dtype))[0] == vec_softmax
        assert B._row_vec(x3) == (vec_lse, span)


@pytest.mark.parametrize("itemsize, rows, n, clusters, route", [
    (4, 1, 4096, True, "block"), (4, 65, 8192, True, "block"), (2, 1, 16384, True, "block"),
    (8, 64, 4096, True, "block"), (4, 1000, 1024, True, "block"), (4, 3, 4097, False, "block"),
    (4, 4, 131072, True, "split"), (2, 65, 32768, True, "split"), (4, 66, 131072, True, "cluster"),
    (2, 66, 16385, True, "cluster"), (4, 128, 131072, False, "split"), (4, 1, 262144, True, "split"),
])
def test_row_route_rule(itemsize, rows, n, clusters, route):
    """Rows that one block holds stay that block's however few they are; rows of a
    cluster too few to give half the SMs a block, rows past the table and GPUs without
    clusters take the split route (no CuPy needed; 132 SMs)."""
    from cupy_softmax import _kernels
    G, xch = _kernels.row_softmax_plan(itemsize, rows, n, 132, True, clusters, ())[3:5]
    assert ("block" if xch == 0 and G == 1 else "split" if xch == 1 else
            "cluster" if xch == G >= 2 else None) == route


@pytest.mark.parametrize("rows, n, tune, plan", [
    (4096, 4096, (), (32, 1, 4096)),          # a warp a row, four passes a lane
    (65536, 128, (), (4, 1, 128)),            # 4 lanes a row, one pass each
    (4096, 16384, (), (256, 1, 16384)),       # rows past 8 passes a lane: a block a row
    (128, 131072, (), (256, 4, 32768)),       # few rows: 4 chunks each fill the 528 slots
    (1, 262144, (), (256, 32, 8192)),
    (1, 5000, (("stats_G", 3),), (256, 3, 2048)),   # chunks of whole passes of the block
])
def test_row_stats_plan(rows, n, tune, plan):
    """row_stats' lanes a row and chunks (no CuPy needed): float32 vectors of 4, 32
    elements a pass, 132 SMs, 528 blocks resident."""
    from cupy_softmax import _kernels
    assert _kernels.row_stats_plan(4, 4, False, 32, rows, n, 132, 528, tune) == plan

