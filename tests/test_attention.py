"""attention(): blocked (online-softmax) attention against a float64 reference.

Every test runs on both backends (``xp`` fixture): NumPy runs the blocked NumPy
implementation, CuPy the kernels (tensor cores for float16/bfloat16, SIMT for
float32/float64).  The reference is the naive softmax(q k^T * scale) v in float64 on
the same (rounded) inputs.

Tolerances (METHOD.md's bands): the error of a float32-accumulated result is a few ulps
of float32 plus, for 16-bit inputs, the rounding of the output and (on tensor cores) of
the probabilities to the input type: ||out - ref|| / ||ref|| under 1e-2 (typically a
few 1e-3) for float16/bfloat16.  Scores are computed in the accumulation type, so an
absolute score error of about eps * sum_d |q_d k_d| * scale moves every probability by
that relative amount: ``score_error`` adds it (it matters for large-magnitude inputs).
"""

import math

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from _helpers import BFLOAT16, CUPY, asnumpy, dtype_of, dtype_params, is_cupy, to_xp
from cupy_softmax import _attention, _kernels
from cupy_softmax._attention import attention

FLOATS = ["float16", "bfloat16", "float32", "float64"]

# ||out - ref|| / ||ref|| allowed, and elementwise |out - ref| / max|v|
NORM_RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 5e-3, "bfloat16": 1e-2}
ELEM_RTOL = {"float64": 1e-11, "float32": 2e-5, "float16": 1e-2, "bfloat16": 4e-2}
ACC_EPS = {"float64": 2.0 ** -52, "float32": 2.0 ** -23, "float16": 2.0 ** -23, "bfloat16": 2.0 ** -23}
LSE_RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-6, "bfloat16": 2e-6}


def dname(dtype):
    return "bfloat16" if BFLOAT16 is not None and np.dtype(dtype) == BFLOAT16 else np.dtype(dtype).name


# ---------------------------------------------------------------------------
# Reference and comparison

def ref_attention(q, k, v, scale=None, causal=False, kv_lens=None):
    """float64 naive attention on host copies; (out, lse), 4-d or 3-d like q."""
    q, k, v = (np.asarray(asnumpy(a)).astype(np.float64) for a in (q, k, v))
    squeeze = q.ndim == 3
    if squeeze:
        q, k, v = q[None], k[None], v[None]
    B, Hq, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    k = np.repeat(k, Hq // Hkv, axis=1)
    v = np.repeat(v, Hq // Hkv, axis=1)
    with np.errstate(all="ignore"):
        s = np.einsum("bhid,bhjd->bhij", q, k) * scale
        lens = np.full(B, Lk) if kv_lens is None else np.asarray(asnumpy(kv_lens)).astype(np.int64)
        j = np.arange(Lk)
        i = np.arange(Lq)
        mask = j[None, None, :] >= lens[:, None, None]                      # (B, 1, Lk)
        if causal:
            mask = mask | (j[None, None, :] > i[None, :, None] + (lens - Lq)[:, None, None])
        s = np.where(mask[:, None], -np.inf, s)
        m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        mf = np.where(np.isfinite(m), m, 0)
        p = np.exp(s - mf)
        l = p.sum(-1, keepdims=True)
        out = np.where(l == 0, 0, (p @ v) / np.where(l == 0, 1, l))
        lse = np.where(l == 0, -np.inf, mf + np.log(l))[..., 0]
    if squeeze:
        return out[0], lse[0]
    return out, lse


def score_magnitude(q, k, scale=None):
    """scale * max_ij sum_d |q_id k_jd| (float64, over all heads)."""
    q, k = (np.asarray(asnumpy(a)).astype(np.float64) for a in (q, k))
    if q.ndim == 3:
        q, k = q[None], k[None]
    d = q.shape[-1]
    scale = abs(1 / math.sqrt(d) if scale is None else scale)
    G = q.shape[1] // k.shape[1]
    ka = np.repeat(np.abs(k), G, axis=1)
    if q.size == 0 or ka.size == 0:
        return 0.0
    return float(np.max(np.einsum("bhid,bhjd->bhij", np.abs(q), ka)) * scale)


def check_attention(out, lse, ref_out, ref_lse, dtype, mag=0.0, v=None, what="attention", extra=0.0):
    """Compare with the float64 reference (out: any backend)."""
    name = dname(dtype)
    a = np.asarray(asnumpy(out)).astype(np.float64)
    r = ref_out
    assert a.shape == r.shape, (what, a.shape, r.shape)
    assert not np.isnan(a).any(), f"{what}: NaN in output"
    vmax = max(float(np.max(np.abs(asnumpy(v).astype(np.float64)))) if v is not None and np.size(v) else 1.0, 1e-30)
    cond = 8 * ACC_EPS[name] * mag + extra
    err = np.abs(a - r)
    bad = err > (ELEM_RTOL[name] + cond) * vmax
    assert not bad.any(), (f"{what} [{name}]: {int(bad.sum())} of {bad.size} elements off; max err "
                           f"{err.max():.3g}, allowed {(ELEM_RTOL[name] + cond) * vmax:.3g}")
    nr = np.linalg.norm(r)
    if nr > 0:
        rel = np.linalg.norm(a - r) / nr
        assert rel <= NORM_RTOL[name] + cond, f"{what} [{name}]: norm-relative error {rel:.3g}"
    if lse is not None:
        la = np.asarray(asnumpy(lse)).astype(np.float64)
        assert la.shape == ref_lse.shape, (la.shape, ref_lse.shape)
        inf_r = np.isinf(ref_lse)
        assert np.array_equal(la[inf_r], ref_lse[inf_r]), f"{what}: lse infinities differ"
        assert not np.isnan(la).any(), f"{what}: NaN in lse"
        fin = ~inf_r
        tol = (LSE_RTOL[name] + cond) * (1 + np.abs(ref_lse[fin]))
        lerr = np.abs(la[fin] - ref_lse[fin])
        assert (lerr <= tol).all(), f"{what}: lse max error {lerr.max():.3g}"


def make(xp, rng, shape, dtype, scale=1.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32).astype(dtype_of(dtype))
    return to_xp(xp, x)


def qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype, mag=1.0):
    return (make(xp, rng, (B, Hq, Lq, d), dtype, mag), make(xp, rng, (B, Hkv, Lk, d), dtype, mag),
            make(xp, rng, (B, Hkv, Lk, d), dtype))


@pytest.fixture
def tiny_blocks(monkeypatch):
    """NumPy path: blocks of 5 packed rows and 7 keys, so that block merges happen."""
    monkeypatch.setattr(_attention, "BLOCK_ROWS", 5)
    monkeypatch.setattr(_attention, "BLOCK_K", 7)


# ---------------------------------------------------------------------------
# Shapes: (B, Hq, Hkv, Lq, Lk, d, causal)

CASES = [
    (2, 4, 4, 37, 53, 64, False),
    (1, 8, 2, 129, 200, 128, True),       # GQA, causal, q_len < kv_len
    (2, 4, 1, 70, 33, 80, True),          # MQA, q_len > kv_len: rows with no key
    (1, 2, 2, 1, 1, 256, False),
    (1, 2, 1, 17, 300, 256, True),
    (1, 3, 3, 65, 65, 64, True),
    (1, 4, 2, 5, 1000, 128, False),       # short query: split keys on the GPU
    (1, 2, 2, 33, 47, 72, False),
    (1, 2, 1, 19, 23, 24, True),
    (1, 2, 2, 9, 31, 20, False),          # head_dim not a multiple of 8
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + ("-causal" if c[6] else ""))
@pytest.mark.parametrize("dtype", dtype_params(FLOATS))
def test_matches_reference(xp, dtype, case):
    B, Hq, Hkv, Lq, Lk, d, causal = case
    rng = np.random.default_rng(hash(case) % 2**32)
    q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
    out, lse = attention(q, k, v, causal=causal, return_lse=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert lse.shape == (B, Hq, Lq)
    ref_out, ref_lse = ref_attention(q, k, v, causal=causal)
    check_attention(out, lse, ref_out, ref_lse, q.dtype, score_magnitude(q, k), v)
    out2 = attention(q, k, v, causal=causal)                  # without lse: same output
    np.testing.assert_array_equal(asnumpy(out2).astype(np.float64), asnumpy(out).astype(np.float64))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_block_merges(tiny_blocks, dtype):
    rng = np.random.default_rng(3)
    for case in CASES[:6]:
        B, Hq, Hkv, Lq, Lk, d, causal = case
        q, k, v = qkv(np, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
        out, lse = attention(q, k, v, causal=causal, return_lse=True)
        check_attention(out, lse, *ref_attention(q, k, v, causal=causal), q.dtype, score_magnitude(q, k), v)


@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32"]))
def test_three_d_input(xp, dtype):
    rng = np.random.default_rng(4)
    q, k, v = (make(xp, rng, s, dtype) for s in [(4, 9, 32), (2, 12, 32), (2, 12, 32)])
    out, lse = attention(q, k, v, return_lse=True, causal=True)
    assert out.shape == (4, 9, 32) and lse.shape == (4, 9)
    check_attention(out, lse, *ref_attention(q, k, v, causal=True), q.dtype, score_magnitude(q, k), v)


@pytest.mark.parametrize("scale", [0.5, -0.3, 0.0, 2.0])
@pytest.mark.parametrize("dtype", dtype_params(["bfloat16", "float32"]))
def test_scale(xp, dtype, scale):
    rng = np.random.default_rng(5)
    q, k, v = qkv(xp, rng, 1, 2, 1, 20, 40, 64, dtype)
    out, lse = attention(q, k, v, scale=scale, return_lse=True, causal=True)
    check_attention(out, lse, *ref_attention(q, k, v, scale=scale, causal=True), q.dtype,
                    score_magnitude(q, k, scale), v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", dtype_params(["float16", "float64"]))
def test_kv_lens(xp, dtype, causal):
    rng = np.random.default_rng(6)
    B, Hq, Hkv, Lq, Lk, d = 4, 4, 2, 24, 90, 64
    q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, d, dtype)
    lens = np.array([90, 0, 13, 57])
    for lens_arg in (lens, to_xp(xp, lens.astype(np.int32)), list(lens)):
        out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=lens_arg)
        ref = ref_attention(q, k, v, causal=causal, kv_lens=lens)
        check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k), v)
    # the keys past a length do not matter, whatever they hold
    k2 = asnumpy(k).copy()
    k2[2, :, 13:] = 1e4
    out2 = attention(q, to_xp(xp, k2), v, causal=causal, kv_lens=lens)
    np.testing.assert_array_equal(asnumpy(out2).astype(np.float64), asnumpy(out).astype(np.float64))


@pytest.mark.parametrize("dtype", dtype_params(["float16", "bfloat16", "float32"]))
def test_strided_inputs(xp, dtype):
    """(batch, seq, heads, dim) storage seen as (batch, heads, seq, dim); k, v slices."""
    rng = np.random.default_rng(7)
    qs = make(xp, rng, (2, 33, 4, 64), dtype)
    ks = make(xp, rng, (2, 50, 2, 128), dtype)
    vs = make(xp, rng, (2, 50, 2, 128), dtype)
    q = qs.transpose(0, 2, 1, 3)
    k = ks.transpose(0, 2, 1, 3)[..., 64:]
    v = vs.transpose(0, 2, 1, 3)[..., :64]
    out, lse = attention(q, k, v, return_lse=True, causal=True)
    check_attention(out, lse, *ref_attention(q, k, v, causal=True), q.dtype, score_magnitude(q, k), v)


@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32"]))
def test_empty_and_tiny(xp, dtype):
    rng = np.random.default_rng(8)
    q, k, v = qkv(xp, rng, 2, 2, 2, 3, 0, 16, dtype)
    out, lse = attention(q, k, v, return_lse=True)
    assert (asnumpy(out) == 0).all() and np.isneginf(asnumpy(lse)).all()
    q, k, v = qkv(xp, rng, 2, 2, 2, 0, 5, 16, dtype)
    out, lse = attention(q, k, v, return_lse=True)
    assert out.shape == (2, 2, 0, 16) and lse.shape == (2, 2, 0)
    q, k, v = qkv(xp, rng, 1, 1, 1, 1, 1, 8, dtype)
    out, lse = attention(q, k, v, return_lse=True)
    check_attention(out, lse, *ref_attention(q, k, v), q.dtype, score_magnitude(q, k), v)


@pytest.mark.parametrize("dtype", dtype_params(["float16", "float32"]))
def test_nan_stays_in_its_row(xp, dtype):
    rng = np.random.default_rng(9)
    q, k, v = (asnumpy(a) for a in qkv(xp, rng, 1, 2, 2, 6, 40, 64, dtype))
    q[0, 1, 3, 5] = np.nan
    out = asnumpy(attention(to_xp(xp, q), to_xp(xp, k), to_xp(xp, v))).astype(np.float64)
    assert np.isnan(out[0, 1, 3]).all()
    rest = np.ones(out.shape[:3], bool)
    rest[0, 1, 3] = False
    assert not np.isnan(out[rest]).any()


# ---------------------------------------------------------------------------
# Large magnitudes (scores in the thousands): finite and correct

@given(data=st.data())
def test_fuzz_large_magnitude(xp, data):
    dtype = data.draw(st.sampled_from(["float16", "float32", "float64"] + (["bfloat16"] if BFLOAT16 is not None else [])))
    B = data.draw(st.integers(1, 2))
    Hkv = data.draw(st.integers(1, 2))
    G = data.draw(st.sampled_from([1, 2, 3]))
    Lq = data.draw(st.integers(1, 12))
    Lk = data.draw(st.integers(1, 40))
    d = data.draw(st.sampled_from([8, 16, 64]))
    causal = data.draw(st.booleans())
    mag = data.draw(st.sampled_from([1.0, 30.0, 100.0]))
    seed = data.draw(st.integers(0, 2**31))
    note(f"{dtype} B={B} Hkv={Hkv} G={G} Lq={Lq} Lk={Lk} d={d} causal={causal} mag={mag}")
    rng = np.random.default_rng(seed)
    q, k, v = qkv(xp, rng, B, G * Hkv, Hkv, Lq, Lk, d, dtype, mag=mag)
    out, lse = attention(q, k, v, causal=causal, return_lse=True)
    ref = ref_attention(q, k, v, causal=causal)
    check_attention(out, lse, *ref, q.dtype, score_magnitude(q, k), v, what="large magnitude")


# ---------------------------------------------------------------------------
# Validation

def test_errors(xp):
    rng = np.random.default_rng(10)
    q, k, v = qkv(xp, rng, 1, 4, 2, 5, 6, 16, "float32")
    with pytest.raises(TypeError, match="one dtype"):
        attention(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match="dtype"):
        attention(q.astype(np.int32), k.astype(np.int32), v.astype(np.int32))
    with pytest.raises(ValueError, match="4-d"):
        attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="same number of dimensions"):
        attention(q, k[0], v[0])
    with pytest.raises(ValueError, match="k and v"):
        attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match="head_dim"):
        attention(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="divide"):
        attention(q, k[:, :1].repeat(3, axis=1), v[:, :1].repeat(3, axis=1))
    with pytest.raises(ValueError, match="batch"):
        attention(q, xp.concatenate([k, k]), xp.concatenate([v, v]))
    with pytest.raises(ValueError, match="finite"):
        attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="real number"):
        attention(q, k, v, scale="2")
    with pytest.raises(ValueError, match="kv_lens"):
        attention(q, k, v, kv_lens=[1, 2])
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        attention(q, k, v, kv_lens=[7])
    with pytest.raises(TypeError, match="integers"):
        attention(q, k, v, kv_lens=[1.5])


def test_mixed_backends_rejected():
    if CUPY is None:
        pytest.skip("needs CuPy and a GPU")
    rng = np.random.default_rng(11)
    q, k, v = qkv(np, rng, 1, 2, 2, 3, 4, 8, "float32")
    with pytest.raises(TypeError, match="mix"):
        attention(CUPY.asarray(q), k, v)


# ---------------------------------------------------------------------------
# Against torch's scaled_dot_product_attention on the GPU

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_against_torch(xp, dtype, causal):
    if not is_cupy(xp):
        pytest.skip("GPU only")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    tdt = getattr(torch, dtype)
    for (B, Hq, Hkv, Lq, Lk, d) in [(2, 8, 8, 300, 300, 64), (1, 8, 2, 100, 513, 128), (3, 4, 4, 1, 999, 128)]:
        g = torch.Generator(device="cuda").manual_seed(B * 1000 + Lk)
        tq = torch.randn(B, Hq, Lq, d, device="cuda", dtype=tdt, generator=g)
        tk = torch.randn(B, Hkv, Lk, d, device="cuda", dtype=tdt, generator=g)
        tv = torch.randn(B, Hkv, Lk, d, device="cuda", dtype=tdt, generator=g)
        kw = {"enable_gqa": True} if Hq != Hkv else {}
        if causal and Lq != Lk:
            # torch's is_causal is top-left aligned; build the bottom-right mask explicitly
            i = torch.arange(Lq, device="cuda")[:, None]
            j = torch.arange(Lk, device="cuda")[None, :]
            ref = torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, attn_mask=j <= i + (Lk - Lq), **kw)
        else:
            ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, **kw)
        q, k, v = (to_xp(xp, t.float().cpu().numpy().astype(dtype_of(dtype))) for t in (tq, tk, tv))
        out = attention(q, k, v, causal=causal)
        a = asnumpy(out).astype(np.float64)
        r = ref.float().cpu().numpy().astype(np.float64)
        rel = np.linalg.norm(a - r) / np.linalg.norm(r)
        assert rel < 1e-2, (B, Hq, Hkv, Lq, Lk, d, rel)


# ---------------------------------------------------------------------------
# Every kernel-shape candidate the benchmark may select (GPU)

def _variant_ids():
    out = []
    for kind, table in _attention.CANDIDATES.items():
        for D, cfgs in table.items():
            out += [pytest.param(kind, cfg, id=f"{kind}-{'-'.join(map(str, cfg))}") for cfg in cfgs]
    return out


@pytest.mark.parametrize("kind,cfg", _variant_ids())
def test_kernel_variants(xp, kind, cfg, monkeypatch):
    if not is_cupy(xp):
        pytest.skip("GPU only")
    if isinstance(cfg, (_attention.WGConfig, _attention.WSConfig)) and not _kernels.has_wgmma():
        pytest.skip("wgmma kernels need compute capability 9.0")
    monkeypatch.setitem(_attention.TUNE, kind, {**getattr(_attention, kind.upper()), cfg.D: cfg})
    if isinstance(cfg, _attention.WSConfig):
        monkeypatch.setitem(_attention.TUNE, "splits", 1)   # it has no split code
    rng = np.random.default_rng(17)
    d = cfg.D
    shapes = ([(2, 4, 2, 133, 170, d, True), (1, 3, 3, 77, 77, d, False), (1, 2, 1, 300, 45, d, True),
               (2, 2, 2, 129, 1000, d, False)] if kind == "prefill" else
              [(2, 8, 2, 1, 1031, d, False), (1, 4, 4, 3, 4100, d, True), (3, 32, 8, 1, 777, d, False)])
    for dtype in ("float16", "bfloat16") if BFLOAT16 is not None else ("float16",):
        for (B, Hq, Hkv, Lq, Lk, dd, causal) in shapes:
            q, k, v = qkv(xp, rng, B, Hq, Hkv, Lq, Lk, dd, dtype)
            lens = [Lk - 3] + [Lk] * (B - 1)
            out, lse = attention(q, k, v, causal=causal, return_lse=True, kv_lens=lens)
            check_attention(out, lse, *ref_attention(q, k, v, causal=causal, kv_lens=lens), q.dtype,
                            score_magnitude(q, k), v, what=f"{cfg} {dtype} {(B, Hq, Hkv, Lq, Lk, causal)}")
