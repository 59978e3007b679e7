"""The cluster route of column softmax, forced.

The dispatcher takes it for slices that fill the 8 blocks of a cluster (up to 8192
rows); here ``_cupy_backend.TUNE`` forces it with every strip width it uses, on slices
that fill the cluster, leave its last ranks few rows or none, have rows narrower than
the strip or strips that end past the last column, several slices, a large entry and a
column of -inf.  A spy checks that the route ran; outputs start poisoned (conftest).
"""

import numpy as np
import pytest

import cupy_softmax as cs
from _helpers import CUPY, CUPY_SKIP_REASON, assert_close, dtype_of, ref_softmax

# (shape, axis, strip bytes).  A block stages 64 KB: 64 KB / strip rows of a strip as
# wide as the strip (more where the rows are narrower), and the cluster's 8 blocks take
# them in turn; comments for float32.
CASES = [
    ((1025, 64), 0, 256),           # ranks 0-3 full, rank 4 one row, 5-7 none
    ((2048, 96), 0, 256),           # every rank full; the second strip ends past inner
    ((100, 8), 0, 256),             # rows narrower than the strip: rank 0 alone
    ((300, 64), 0, 128),            # rank 0 alone
    ((4000, 40), 0, 128),
    ((8192, 40), 0, 64),
    ((3, 1500, 24), 1, 256),        # several slices
]


@pytest.mark.skipif(CUPY is None, reason=str(CUPY_SKIP_REASON))
@pytest.mark.parametrize("shape, axis, strip", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16", "float64"])
def test_col_cluster(dtype_name, shape, axis, strip, monkeypatch):
    from cupy_softmax import _cupy_backend, _kernels
    if not _kernels.has_clusters():
        pytest.skip("clusters need sm_90")
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(sum(shape))
    x_np = (rng.standard_normal(shape) * 4).astype(dtype)
    flat = x_np.reshape(shape[0], -1)
    flat[shape[0] // 2, 0] = 40          # a large entry
    flat[:, 2] = -np.inf                 # a column of -inf
    x = CUPY.asarray(x_np)

    calls = []
    route = _cupy_backend._col_softmax_cluster
    monkeypatch.setattr(_cupy_backend, "_col_softmax_cluster",
                        lambda *a: calls.append(a[3]) or route(*a))
    monkeypatch.setitem(_cupy_backend.TUNE, "col_cluster_strip", strip)
    with np.errstate(invalid="ignore"):
        ref_p = ref_softmax(x_np, axis, False)
        ref_l = ref_softmax(x_np, axis, True)
    assert_close(cs.softmax(x, axis=axis), ref_p, dtype, "prob", what=f"softmax strip {strip}")
    assert_close(cs.log_softmax(x, axis=axis), ref_l, dtype, "log", what=f"log_softmax strip {strip}")
    assert calls == [strip, strip]


@pytest.mark.parametrize("n, inner, itemsize, strip", [
    (1024, 4096, 4, None), (1792, 4096, 4, None), (1793, 4096, 4, 256), (2048, 4096, 4, 256),
    (2049, 4096, 4, None), (3585, 4096, 4, 128), (4096, 4096, 4, 128), (7169, 4096, 4, 64),
    (8192, 32000, 4, 64), (8193, 4096, 4, None), (8192, 8, 4, None), (8192, 16, 4, 64),
    (8192, 8, 8, 64), (4096, 64, 2, 128), (4096, 32, 2, None), (4097, 4096, 2, None),
    (7169, 4096, 2, 64), (8192, 32000, 2, 64), (8193, 32000, 2, None),
])
def test_col_cluster_strip_rule(n, inner, itemsize, strip):
    """The widest strip whose cluster holds the slice, every rank with rows, rows at
    least as wide as the strip (no GPU)."""
    from cupy_softmax import _kernels
    assert _kernels.col_cluster_strip(itemsize, n, inner) == strip
