"""Decode attention (short queries, split keys) and merge_attention.

* Decode shapes against the float64 reference: kv lengths 1, 17, 4096, 131072 and odd
  values, with and without GQA and kv_lens (on the GPU these take the split-KV kernel
  and the merge kernel).
* merge_attention: random splits of the keys (empty chunks included), random merge
  orders and trees (list form, pair form, stacked form) against one-shot attention;
  large-magnitude scores; all-empty parts; validation.
"""

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from _helpers import BFLOAT16, asnumpy, dtype_params, is_cupy, to_xp
from cupy_softmax._attention import attention, merge_attention, merge_attention_pair
from test_attention import (check_attention, dname, make, qkv, ref_attention,
                            score_magnitude)


# ---------------------------------------------------------------------------
# Decode against the reference

DECODE_CASES = [
    # (B, Hq, Hkv, Lq, Lk, d, kv_lens)
    (2, 4, 4, 1, 1, 128, None),
    (2, 4, 1, 1, 17, 128, None),
    (1, 8, 2, 1, 4096, 128, None),
    (3, 8, 2, 1, 4099, 64, [4099, 1, 2000]),
    (2, 4, 4, 3, 1031, 128, [0, 1031]),
    (1, 32, 8, 1, 777, 128, None),
    (1, 32, 1, 2, 300, 64, None),            # MQA: 64 packed rows
    (2, 4, 2, 16, 515, 256, [515, 100]),
    (40, 8, 8, 2, 333, 128, None),           # many blocks: the two-blocks-an-SM decode shape
    (1, 4, 4, 1, 131072, 128, None),
    (2, 16, 4, 1, 131072, 128, [131072, 65537]),
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: "x".join(map(str, c[:6])) + ("-lens" if c[6] else ""))
@pytest.mark.parametrize("dtype", dtype_params(["float16", "bfloat16", "float32"]))
def test_decode_matches_reference(xp, dtype, case):
    B, Hq, Hkv, Lq, Lk, d, lens = case
    if not is_cupy(xp) and (Lk * Hkv * B > 200_000 or dtype != "float16"):
        pytest.skip("long NumPy decode runs once, in float16 (CPU time)")
    rng = np.random.default_rng(Lk + Hq)
    q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
    kv_lens = None if lens is None else np.array(lens)
    for causal in (False, True):
        out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=kv_lens)
        ref = ref_attention(q, k, v, causal=causal, kv_lens=kv_lens)
        check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k), v, what=f"decode causal={causal}")


@pytest.mark.parametrize("case", DECODE_CASES[:4], ids=lambda c: "x".join(map(str, c[:6])))
def test_decode_against_torch(xp, case):
    if not is_cupy(xp):
        pytest.skip("GPU only")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    B, Hq, Hkv, Lq, Lk, d, lens = case
    g = torch.Generator(device="cuda").manual_seed(Lk)
    tq, tk, tv = (torch.randn(B, h, n, d, device="cuda", dtype=torch.float16, generator=g)
                  for h, n in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    kw = {"enable_gqa": True} if Hq != Hkv else {}
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, **kw)
    q, k, v = (to_xp(xp, t.cpu().numpy()) for t in (tq, tk, tv))
    out = asnumpy(attention(q, k, v)).astype(np.float64)
    r = ref.float().cpu().numpy().astype(np.float64)
    assert np.linalg.norm(out - r) / np.linalg.norm(r) < 1e-2


# ---------------------------------------------------------------------------
# merge_attention

def _merge_tree(parts, how, rng):
    """Merge (out, lse) parts by one of several schedules."""
    parts = list(parts)
    if how == "list":
        return merge_attention([p[0] for p in parts], [p[1] for p in parts])
    if how == "reversed":
        return merge_attention([p[0] for p in parts[::-1]], [p[1] for p in parts[::-1]])
    if how == "pairs-left":
        acc = parts[0]
        for p in parts[1:]:
            acc = merge_attention_pair(acc[0], acc[1], p[0], p[1])
        return merge_attention([acc[0]], [acc[1]])
    if how == "random":
        while len(parts) > 1:
            k = int(rng.integers(2, len(parts) + 1))
            pick = sorted(rng.choice(len(parts), size=k, replace=False).tolist())
            order = rng.permutation(pick)
            merged = merge_attention([parts[i][0] for i in order], [parts[i][1] for i in order])
            parts = [p for i, p in enumerate(parts) if i not in pick] + [merged]
        return merge_attention([parts[0][0]], [parts[0][1]])
    raise ValueError(how)


def _stack(xp, arrays):
    return xp.stack(arrays)


@given(data=st.data())
def test_fuzz_merge_order_invariance(xp, data):
    dtype = data.draw(st.sampled_from(["float16", "float32", "float64"] + (["bfloat16"] if BFLOAT16 is not None else [])))
    B = data.draw(st.integers(1, 2))
    Hkv = data.draw(st.integers(1, 2))
    G = data.draw(st.sampled_from([1, 2, 4]))
    Lq = data.draw(st.integers(1, 6))
    Lk = data.draw(st.integers(0, 48))
    d = data.draw(st.sampled_from([8, 32, 64]))
    mag = data.draw(st.sampled_from([1.0, 1.0, 40.0]))
    n_cuts = data.draw(st.integers(0, 9))
    cuts = sorted(data.draw(st.lists(st.integers(0, Lk), min_size=n_cuts, max_size=n_cuts)))
    bounds = [0] + cuts + [Lk]
    how = data.draw(st.sampled_from(["list", "reversed", "pairs-left", "random", "stacked"]))
    seed = data.draw(st.integers(0, 2**31))
    note(f"{dtype} B={B} Hkv={Hkv} G={G} Lq={Lq} Lk={Lk} d={d} bounds={bounds} {how}")
    rng = np.random.default_rng(seed)
    q, k, v = qkv(xp, rng, B, G * Hkv, Hkv, Lq, Lk, d, dtype, mag=mag)
    parts = [attention(q, k[:, :, a:b], v[:, :, a:b], return_lse=True) for a, b in zip(bounds[:-1], bounds[1:])]
    if how == "stacked":
        out, lse = merge_attention(_stack(xp, [p[0] for p in parts]), _stack(xp, [p[1] for p in parts]))
    else:
        out, lse = _merge_tree(parts, how, rng)
    ref = ref_attention(q, k, v)
    # each merge level rounds the output to the part dtype once more
    levels = len(parts)
    extra = 0.0 if dname(q.dtype) in ("float32", "float64") else levels * 2.0 ** -8
    check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k) + levels, v, what="merged", extra=extra)
    one = attention(q, k, v, return_lse=True)
    check_attention(one[0], one[1], *ref, q.dtype, score_magnitude(q, k), v, what="one-shot")


@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32", "float64"]))
def test_merge_many_parts(xp, dtype):
    """More than 8 parts (the GPU's stacked kernel), some empty."""
    rng = np.random.default_rng(12)
    q, k, v = qkv(xp, rng, 2, 8, 2, 3, 120, 128, dtype)
    bounds = [0, 0, 7, 20, 20, 33, 50, 51, 77, 90, 100, 119, 120, 120]
    parts = [attention(q, k[:, :, a:b], v[:, :, a:b], return_lse=True) for a, b in zip(bounds[:-1], bounds[1:])]
    out, lse = merge_attention([p[0] for p in parts], [p[1] for p in parts])
    check_attention(out, lse, *ref_attention(q, k, v), q.dtype, score_magnitude(q, k) + 13, v,
                    extra=0.0 if dtype != "float16" else 13 * 2.0 ** -10)


@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32"]))
def test_merge_all_empty(xp, dtype):
    rng = np.random.default_rng(13)
    o = [make(xp, rng, (2, 3, 16), dtype) for _ in range(3)]       # garbage outputs
    l = [to_xp(xp, np.full((2, 3), -np.inf, np.float32)) for _ in range(3)]
    out, lse = merge_attention(o, l)
    assert (asnumpy(out).astype(np.float64) == 0).all()
    assert np.isneginf(asnumpy(lse)).all()
    # an empty part among others is ignored even where its output is NaN
    bad = asnumpy(o[0]).copy()
    bad[...] = np.nan
    lse1 = to_xp(xp, np.zeros((2, 3), np.float32))
    out, lse = merge_attention([to_xp(xp, bad), o[1]], [l[0], lse1])
    np.testing.assert_array_equal(asnumpy(out).astype(np.float64), asnumpy(o[1]).astype(np.float64))
    assert (asnumpy(lse) == 0).all()


def test_merge_dtypes(xp):
    rng = np.random.default_rng(14)
    o1 = make(xp, rng, (4, 32), "float16")
    o2 = make(xp, rng, (4, 32), "float32")
    l1 = to_xp(xp, rng.standard_normal(4).astype(np.float32))
    l2 = to_xp(xp, rng.standard_normal(4))
    out, lse = merge_attention([o1, o2], [l1, l2])
    assert out.dtype == np.float32 and lse.dtype == np.float64
    w1 = np.exp(asnumpy(l1).astype(np.float64))
    w2 = np.exp(asnumpy(l2))
    ref = (w1[:, None] * asnumpy(o1).astype(np.float64) + w2[:, None] * asnumpy(o2)) / (w1 + w2)[:, None]
    np.testing.assert_allclose(asnumpy(out), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(asnumpy(lse), np.log(w1 + w2), rtol=1e-6)


def test_merge_errors(xp):
    rng = np.random.default_rng(15)
    o = make(xp, rng, (2, 3, 8), "float32")
    l = to_xp(xp, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        merge_attention([], [])
    with pytest.raises(ValueError, match="2 outputs but 1"):
        merge_attention([o, o], [l])
    with pytest.raises(ValueError, match="one shape"):
        merge_attention([o, o[:1]], [l, l])
    with pytest.raises(ValueError, match="less the last"):
        merge_attention([o], [l[:1]])
    with pytest.raises(TypeError, match="dtype"):
        merge_attention([o.astype(np.int32)], [l])


# ---------------------------------------------------------------------------
# The split-KV path directly: forced splits on short and long queries (GPU)

@pytest.mark.parametrize("splits", [2, 7, 64])
@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32"]))
def test_forced_splits(xp, dtype, splits, monkeypatch):
    from cupy_softmax import _attention
    monkeypatch.setitem(_attention.TUNE, "splits", splits)
    rng = np.random.default_rng(16 + splits)
    for (B, Hq, Hkv, Lq, Lk, d, causal) in [(2, 4, 2, 40, 700, 64, True), (1, 8, 8, 2, 1000, 128, True)]:
        q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
        out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=[Lk - 5] + [Lk] * (B - 1))
        ref = ref_attention(q, k, v, causal=causal, kv_lens=[Lk - 5] + [Lk] * (B - 1))
        check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k), v, what=f"splits={splits}")


def test_split_rules():
    """The split counts the benchmark's decode shapes get on a GPU of 132 multiprocessors
    (blocks, key tiles, resident blocks): fill one wave; cut a few waves of long streams
    into more; leave many waves, short streams and prefill alone."""
    from cupy_softmax._attention import _choose_splits
    assert _choose_splits(32, 64, 132, True) == (4, 16)         # MHA (1, 8192)
    assert _choose_splits(512, 256, 132, True) == (4, 64)       # MHA (16, 32768): 15.5 waves
    assert _choose_splits(512, 64, 132, True) == (1, 64)        # MHA (16, 8192): pieces too short
    assert _choose_splits(2048, 32, 132, True) == (1, 32)       # MHA (64, 4096): 15.5 waves
    assert _choose_splits(128, 256, 132, True) == (1, 256)      # GQA (16, 32768): one wave
    assert _choose_splits(512, 256, 132, False) == (1, 256)     # not a decode grid


def test_multi_wave_decode_splits(xp, monkeypatch):
    """A decode grid of a few waves splits its keys until it has DECODE_MIN_WAVES waves
    (pieces of at least DECODE_MIN_SPLIT_TILES tiles); shown on a GPU that reports 4
    multiprocessors, so that 8 heads make two waves."""
    if not is_cupy(xp):
        pytest.skip("GPU only")
    from cupy_softmax import _attention
    monkeypatch.setattr(_attention, "_sm_count", lambda: 4)
    _attention._launch_plan.cache_clear()
    try:
        B, Hq, Hkv, Lk, d = 1, 8, 8, 2 * _attention.DECODE_MIN_SPLIT_TILES * 128 + 5, 128
        rng = np.random.default_rng(29)
        q, k, v = qkv(xp, rng, B, Hq, Hkv, 1, Lk, d, "float16")
        plan = _attention._launch_plan(xp.cuda.runtime.getDevice(), "float16", B, Hkv, 1, 1, Lk, d,
                                       False, repr(_attention.TUNE))
        assert plan[4] == 2, plan
        out, lse = attention(q, k, v, return_lse=True)
        check_attention(out, lse, *ref_attention(q, k, v), q.dtype, score_magnitude(q, k), v,
                        what="multi-wave split")
    finally:
        _attention._launch_plan.cache_clear()


# The on-chip split finish (a cluster of n_splits blocks merging through distributed shared
# memory, sm_90): it must give the float64 reference's answer and, since it merges the same
# parts in the same order with the same arithmetic, bit for bit the global finish's.
ON_CHIP_CASES = [
    # (B, Hq, Hkv, Lq, Lk, d, kv_lens): one and two 16-row m-tiles, D 64 / 128 / 256,
    # splits that see no key (kv_lens 0 and short), lengths that are not tile multiples
    # (16, 18 or 24 key tiles: every split count below keeps its count)
    (1, 8, 8, 1, 3000, 128, [0]),
    (1, 32, 4, 3, 2000, 128, [40]),
    (3, 4, 2, 1, 1500, 64, [1500, 7, 1499]),
    (1, 16, 2, 4, 999, 64, None),
    (2, 4, 4, 2, 1020, 256, [1020, 1]),
]


@pytest.mark.parametrize("splits", [2, 4, 8])
@pytest.mark.parametrize("case", ON_CHIP_CASES, ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("dtype", dtype_params(["float16", "bfloat16"]))
def test_on_chip_split_finish(xp, dtype, case, splits, monkeypatch):
    if not is_cupy(xp):
        pytest.skip("GPU only")
    from cupy_softmax import _attention, _kernels
    if not _kernels.has_clusters():
        pytest.skip("no thread-block clusters on this GPU")
    B, Hq, Hkv, Lq, Lk, d, lens = case
    monkeypatch.setitem(_attention.TUNE, "splits", splits)
    rng = np.random.default_rng(splits * 1000 + Lk)
    q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
    kv_lens = None if lens is None else np.array(lens + [Lk] * (B - len(lens)))
    dev = xp.cuda.runtime.getDevice()
    for causal in (False, True):
        plan = _attention._launch_plan(dev, dname(q.dtype), B, Hkv, Hq // Hkv, Lq, Lk, d, causal,
                                       repr(_attention.TUNE))
        assert plan[4] == splits
        fn = plan[0]
        out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=kv_lens)
        ref = ref_attention(q, k, v, causal=causal, kv_lens=kv_lens)
        check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k), v,
                        what=f"on-chip splits={splits} causal={causal}")
        monkeypatch.setitem(_attention.TUNE, "on_chip", False)
        glob = _attention._launch_plan(dev, dname(q.dtype), B, Hkv, Hq // Hkv, Lq, Lk, d, causal,
                                       repr(_attention.TUNE))[0]
        assert glob is not fn, "the on-chip instance was not chosen"   # (few clusters: they fit)
        out_g, lse_g = attention(q, k, v, causal=causal, return_lse=True, kv_lens=kv_lens)
        monkeypatch.delitem(_attention.TUNE, "on_chip")
        assert (asnumpy(out).view(np.uint16) == asnumpy(out_g).view(np.uint16)).all()
        np.testing.assert_array_equal(asnumpy(lse), asnumpy(lse_g))
