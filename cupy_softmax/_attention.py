"""Blocked attention and the merge of attention states, on the library's (m, s) algebra.

``attention`` computes softmax(q k^T * scale) v one block of keys at a time: every query
row keeps the online-softmax state (m, s) of its scores seen so far and an unnormalised
output that is rescaled whenever a new block raises m (see ``_state.py``).  The score
matrix is never materialised.  ``merge_attention`` combines results over disjoint key
chunks from their log-sum-exps, which is the merge of their states.

NumPy inputs run the blocked NumPy implementation below (also the reference for the CPU
tests); CuPy inputs run the kernels of ``kernels_cu/attention.cu`` (tensor cores for
float16 / bfloat16, a SIMT kernel for float32 / float64), ``kernels_cu/attention_wgmma.cu``
(the prefill on Hopper's warpgroup MMA, compiled for sm_90a) and
``kernels_cu/decode_attention.cu`` (split-KV decoding and the merge).

The top part (configuration tables, kernel names, module sources) is plain Python and
importable without CuPy, so that a compile check can build every instance with nvcc:
see ``kernel_instances()`` and ``module_source()``.
"""

import functools
import math
import numbers
import sys
from typing import NamedTuple

import numpy as np

from . import _alloc, _dispatch
from ._kernels import cdiv
from . import _state

__all__ = ["attention", "merge_attention", "merge_attention_pair"]

LOG2E = 1.4426950408889634

# ---------------------------------------------------------------------------------
# Kernel configurations (plain data).
#
# Tensor-core kernel (attn_fwd): D is the head-dim tile (64, 128 or 256; smaller head
# dims are zero-padded up to it), MI the 16-row m-tiles per warp, WM x WN the warps
# (WM along rows, WN along the keys of a tile), BNW the keys per warp and tile, STAGES
# the K/V buffers in flight, MINB the __launch_bounds__ minimum blocks per SM.


class TCConfig(NamedTuple):
    D: int
    MI: int
    WM: int
    WN: int
    BNW: int
    STAGES: int
    MINB: int

    @property
    def threads(self):
        return 32 * self.WM * self.WN

    @property
    def BM(self):
        return 16 * self.MI * self.WM

    @property
    def BN(self):
        return self.BNW * self.WN

    @property
    def smem(self):
        return (self.BM * self.D + 2 * self.STAGES * self.BN * self.D) * 2


class WGConfig(NamedTuple):
    """The Hopper prefill kernel (attention_wgmma.cu, wgmma): WGS warpgroups of 64 rows a
    block sharing its K/V tiles, BN keys a tile, STAGES K/V buffers, Q in registers (QREG)
    or shared memory, MINB blocks an SM for __launch_bounds__."""
    D: int
    BN: int
    STAGES: int
    QREG: bool
    WGS: int
    MINB: int

    WN = 1          # no warps along the keys of a tile (the decode configs have WN > 1)

    @property
    def threads(self):
        return 128 * self.WGS

    @property
    def BM(self):
        return 64 * self.WGS

    @property
    def smem(self):
        # + 1024: the kernel aligns its tiles to the 1024-byte swizzle atom
        q_tile = 0 if self.QREG else self.BM * self.D
        return (q_tile + 2 * self.STAGES * self.BN * self.D) * 2 + 1024


class WSConfig(NamedTuple):
    """The warp-specialised Hopper prefill kernel (attention_wgmma.cu, attn_fwd_ws): a
    producer warpgroup and two consumer warpgroups of 64 rows, BN keys a tile, STAGES K/V
    slots, one block an SM; no split code."""
    D: int
    BN: int
    STAGES: int

    WN = 1          # as WGConfig's
    threads = 384
    BM = 128

    @property
    def smem(self):
        return 2 * self.STAGES * self.BN * self.D * 2 + 1024


# Long queries: 4 warps of 32 rows (16 for D = 256, and for short causal D = 64) share
# each K/V tile.  Chosen from the device sweeps recorded in bench/ATTENTION_NOTES.md.
PREFILL = {
    64: TCConfig(64, 2, 4, 1, 128, 2, 2),
    128: TCConfig(128, 2, 4, 1, 64, 2, 2),
    256: TCConfig(256, 1, 4, 1, 32, 2, 2),
}
# On compute capability 9.0 (wgmma), head dims 64 and 128 take the Hopper kernels, by head
# dim and kind of problem ("short causal": causal with at most SHORT_CAUSAL_MAX_K keys, whose
# row blocks see few key tiles).  D = 128: the warp-specialised kernel (a producer warpgroup,
# two consumers ping-ponging their products), but for short causal problems one warpgroup a
# block with Q in registers (3 blocks an SM); D = 64: one warpgroup a block (64-key tiles for
# short causal ones).  Grids that split their keys take PREFILL_HOPPER_SPLIT (the
# warp-specialised kernel has no split code).  H200 sweeps: bench/ATTENTION_NOTES.md,
# session 10.
PREFILL_HOPPER = {
    (64, "long"): WGConfig(64, 128, 2, False, 1, 3),
    (64, "short causal"): WGConfig(64, 64, 2, False, 1, 4),
    (128, "long"): WSConfig(128, 128, 3),
    (128, "short causal"): WGConfig(128, 64, 2, True, 1, 3),
}
PREFILL_HOPPER_SPLIT = {64: WGConfig(64, 128, 2, False, 1, 3), 128: WGConfig(128, 64, 2, False, 2, 2)}
# causal D = 64 with up to this many keys: smaller blocks (64 rows), 4 blocks an SM
PREFILL_64_SHORT_CAUSAL = TCConfig(64, 1, 4, 1, 64, 2, 4)
SHORT_CAUSAL_MAX_K = 2048
# Short queries (q_len <= DECODE_MAX_Q): one 16-row tile (MI = 1) or two (more than 16
# packed rows), 4 warps along the keys, deep K/V pipelines (one block an SM for D = 128:
# few long splits stream best, see the notes).
DECODE = {
    64: TCConfig(64, 1, 1, 4, 16, 4, 2),
    128: TCConfig(128, 1, 1, 4, 32, 3, 1),
    256: TCConfig(256, 1, 1, 4, 16, 2, 1),
}
# D = 128 decode with enough (batch, kv head, row block) blocks for two waves and more,
# and more than one packed row a block: two blocks an SM, no split (hides each block's
# start and end, with its merge of several rows, behind the other's).  With one row a
# block, one block an SM streams faster (H200, session 9, GB/s one / two an SM: MHA
# (16, 8192) 4490 / 4455, (64, 4096) 4567 / 4525; GQA (64, 4096), 4 rows, 4386 / 4401).
DECODE_WIDE = {128: TCConfig(128, 1, 1, 4, 16, 3, 2)}
DECODE_MAX_Q = 16
# Decode grids of 2 to DECODE_MIN_WAVES waves split their keys further (into pieces of at
# least DECODE_MIN_SPLIT_TILES tiles) until they reach that many waves: the hardware then
# hands the fast multiprocessors more blocks, and the last wave is a smaller share (H200,
# MHA (16, 32768): 4 splits 4570 GB/s against 4512 unsplit in 3.9 waves).
DECODE_MIN_WAVES = 12
DECODE_MIN_SPLIT_TILES = 64
# Split counts whose splits merge on chip (sm_90): the splits of a row block are one
# thread-block cluster and merge through distributed shared memory (portable sizes), which
# saves 1.2-2.7 us of the global finish (H200, bench/ATTENTION_NOTES.md, session 5).  When
# the split count that fills the GPU has no clusters that fit, a smaller on-chip count is
# taken if its splits stay within ON_CHIP_MAX_TILES key tiles, where the fixed cost
# dominates (GQA (1, 8192): 8 splits on chip 16.9 us against 16 through global memory
# 19.4 us; MHA (1, 8192), 32 tiles a split: 2 on chip 40.3 us against 4 global 39.3 us).
ON_CHIP_SPLITS = (2, 4, 8)
ON_CHIP_MAX_TILES = 16

# Alternatives timed by the benchmark's sweep (bench/bench_attention.py --sweep) and
# checked by the GPU tests (tests/test_attention.py::test_kernel_variants).
CANDIDATES = {
    "prefill": {
        64: [TCConfig(64, 2, 4, 1, 128, 2, 2), TCConfig(64, 2, 4, 1, 64, 2, 2),
             TCConfig(64, 1, 4, 1, 64, 2, 4), WGConfig(64, 128, 2, False, 1, 3),
             WGConfig(64, 64, 2, False, 1, 4), WGConfig(64, 128, 2, False, 2, 2)],
        128: [TCConfig(128, 2, 4, 1, 64, 2, 2), TCConfig(128, 2, 4, 1, 32, 3, 2),
              WGConfig(128, 64, 2, False, 2, 2), WGConfig(128, 64, 2, True, 1, 3),
              WSConfig(128, 128, 3), WSConfig(128, 64, 4)],
    },
    "decode": {
        128: [TCConfig(128, 1, 1, 4, 32, 3, 1), TCConfig(128, 1, 1, 4, 16, 3, 2),
              TCConfig(128, 1, 1, 4, 16, 4, 1), TCConfig(128, 1, 1, 8, 16, 3, 1),
              TCConfig(128, 1, 1, 4, 16, 6, 1)],
    },
}

# SIMT kernel (float32 / float64): DP the head-dim tile, BK keys a tile.
SIMT_DP = (64, 128, 256)
SIMT_BK = 16

# Overrides for benchmarks and tests ("prefill": {D: TCConfig, WGConfig or WSConfig},
# "decode": {D: TCConfig}, "splits": int, "on_chip": False to merge every split through
# global memory).
TUNE = {}

_CTYPES = {"float16": ("f16", "cs::half_t"), "bfloat16": ("bf16", "cs::bf16_t"),
           "float32": ("f32", "float"), "float64": ("f64", "double")}


def _tile_d(d):
    return 64 if d <= 64 else 128 if d <= 128 else 256


def tc_kernel_name(dtype_name, cfg, split=1):
    key = _CTYPES[dtype_name][0]
    kind = "dec" if cfg.WN > 1 else "fwd"
    tail = {0: "", 1: "_x"}.get(int(split), f"_c{split}")
    return (f"attn_{kind}_{key}_d{cfg.D}_m{cfg.MI}_w{cfg.WM}x{cfg.WN}_n{cfg.BNW}"
            f"_s{cfg.STAGES}_b{cfg.MINB}{tail}")


def tc_kernel_line(dtype_name, cfg, split=1):
    """split: 0 the instance without split code, 1 the one that may split the keys over
    blocks (merging the parts through global memory), n >= 2 exactly n splits merged on
    chip as one cluster."""
    c = cfg
    cluster = f"CS_ATTN_CLUSTER({split})" if split >= 2 else ""
    return (f"CS_ATTN_FWD({tc_kernel_name(dtype_name, cfg, split)}, {_CTYPES[dtype_name][1]}, "
            f"{c.D}, {c.MI}, {c.WM}, {c.WN}, {c.BNW}, {c.STAGES}, {c.MINB}, {int(split)}, {cluster})")


def wg_kernel_name(dtype_name, cfg, split=1):
    tail = "_x" if split else ""
    q = "r" if cfg.QREG else "s"
    return (f"attn_wg_{_CTYPES[dtype_name][0]}_d{cfg.D}_w{cfg.WGS}_n{cfg.BN}_s{cfg.STAGES}{q}"
            f"_b{cfg.MINB}{tail}")


def wg_kernel_line(dtype_name, cfg, split=1):
    """split: 0 the instance without split code, 1 the one that may split the keys."""
    return (f"CS_ATTN_WG({wg_kernel_name(dtype_name, cfg, split)}, {_CTYPES[dtype_name][1]}, "
            f"{cfg.D}, {cfg.BN}, {cfg.STAGES}, {str(bool(cfg.QREG)).lower()}, {cfg.WGS}, {cfg.MINB}, "
            f"{int(bool(split))})")


def ws_kernel_name(dtype_name, cfg):
    return f"attn_ws_{_CTYPES[dtype_name][0]}_d{cfg.D}_n{cfg.BN}_s{cfg.STAGES}"


def prefill_kernel(dtype_name, cfg, split):
    """(entry-point name, instance line) of a prefill config of any kernel."""
    if isinstance(cfg, WSConfig):
        if split:
            raise ValueError("the warp-specialised kernel has no split code")
        name = ws_kernel_name(dtype_name, cfg)
        return name, f"CS_ATTN_WS({name}, {_CTYPES[dtype_name][1]}, {cfg.D}, {cfg.BN}, {cfg.STAGES})"
    if isinstance(cfg, WGConfig):
        return wg_kernel_name(dtype_name, cfg, split), wg_kernel_line(dtype_name, cfg, split)
    return tc_kernel_name(dtype_name, cfg, split), tc_kernel_line(dtype_name, cfg, split)


def simt_smem(dtype_name, dp, bk=SIMT_BK):
    size = 8 if dtype_name == "float64" else 4
    return (16 * (dp + 1) + bk * (dp + 1) + bk * dp + 16 * (bk + 1)) * size


def simt_kernel_name(dtype_name, dp, bk=SIMT_BK):
    return f"attn_simt_{_CTYPES[dtype_name][0]}_d{dp}_k{bk}"


def simt_kernel_line(dtype_name, dp, bk=SIMT_BK):
    return f"CS_ATTN_SIMT({simt_kernel_name(dtype_name, dp, bk)}, {_CTYPES[dtype_name][1]}, {dp}, {bk})"


def merge_kernel_name(kind, part, out, acc):
    k = _CTYPES
    return f"attn_merge_{kind}_{k[part][0]}_{k[out][0]}_{k[acc][0]}"


def merge_kernel_line(kind, part, out, acc):
    macro = "CS_MERGE_STACKED" if kind == "stacked" else "CS_MERGE_LIST"
    k = _CTYPES
    return f"{macro}({merge_kernel_name(kind, part, out, acc)}, {k[part][1]}, {k[out][1]}, {k[acc][1]})"


WGMMA_ARCH = "sm_90a"


def module_source(*lines):
    """NVRTC source of the given instance lines (one at run time; all of them in CI's check).
    The wgmma instances (CS_ATTN_WG, CS_ATTN_WS) need the WGMMA_ARCH target; elsewhere
    their bodies compile to a trap."""
    return ('#include "decode_attention.cu"\n#include "attention_wgmma.cu"\n'
            + "\n".join(lines) + "\n")


def needs_wgmma_arch(line):
    return line.startswith(("CS_ATTN_WG(", "CS_ATTN_WS("))


def kernel_instances():
    """(entry-point name, instance line) of every kernel the default tables use."""
    out = []
    for dt in ("float16", "bfloat16"):
        hopper = dict.fromkeys([*PREFILL_HOPPER.values(), *PREFILL_HOPPER_SPLIT.values()])
        for cfg in [*PREFILL.values(), PREFILL_64_SHORT_CAUSAL, *hopper]:
            for split in ((0,) if isinstance(cfg, WSConfig) else (0, 1)):
                out.append(prefill_kernel(dt, cfg, split))
        for cfg in list(DECODE.values()) + list(DECODE_WIDE.values()):
            for mi in ((1, 2) if cfg.D <= 128 else (1,)):
                c = cfg._replace(MI=mi)
                splits = (1,) + (ON_CHIP_SPLITS if cfg in DECODE.values() else ())
                out.extend((tc_kernel_name(dt, c, n), tc_kernel_line(dt, c, n)) for n in splits)
    for dt in ("float32", "float64"):
        for dp in SIMT_DP:
            out.append((simt_kernel_name(dt, dp), simt_kernel_line(dt, dp)))
    for dt in _CTYPES:
        acc = "float64" if dt == "float64" else "float32"
        combos = {("stacked", dt, dt), ("list", dt, dt), ("list", dt, acc), ("list", acc, dt),
                  ("list", acc, acc)}
        for kind, part, res in sorted(combos):
            out.append((merge_kernel_name(kind, part, res, acc), merge_kernel_line(kind, part, res, acc)))
    return list(dict(out).items())   # float32 merges arise from several dtypes: once each


# ---------------------------------------------------------------------------------
# Validation


def _is_bf16(dtype):
    return dtype.name == "bfloat16"


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


def _check_array(x, xp, name):
    x = xp.asarray(x)
    if x.dtype.name not in _FLOAT_NAMES:
        raise TypeError(f"{name} has dtype {x.dtype}; attention takes float16, bfloat16, "
                        f"float32 or float64")
    return x


def _device_of(x):
    dev_id = getattr(getattr(x, "data", None), "device_id", None)    # CuPy, without a Device object
    if dev_id is not None:
        return dev_id
    return getattr(getattr(x, "device", None), "id", None)


def _check_devices(named, xp):
    if xp is np:
        return
    ids = {name: _device_of(a) for name, a in named if a is not None}
    ids = {name: i for name, i in ids.items() if i is not None}
    if len(set(ids.values())) > 1:
        where = ", ".join(f"{n} on GPU {i}" for n, i in ids.items())
        raise ValueError(f"arrays are on different devices ({where}); move them to one device")


def _validate_attention(q, k, v, xp):
    q, k, v = (_check_array(a, xp, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must have one dtype; got {q.dtype}, {k.dtype} and {v.dtype}")
    if q.ndim not in (3, 4):
        raise ValueError(f"q must be 4-d (batch, heads, seq, head_dim) or 3-d (heads, seq, "
                         f"head_dim); got shape {q.shape}")
    if k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"q, k and v must have the same number of dimensions; got shapes "
                         f"{q.shape}, {k.shape} and {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
    squeeze = q.ndim == 3
    if squeeze:
        q, k, v = q[None], k[None], v[None]
    B, Hq, Lq, d = q.shape
    Bk, Hkv, Lk, dk = k.shape
    if Bk != B:
        raise ValueError(f"q has batch size {B} but k and v have {Bk}")
    if dk != d:
        raise ValueError(f"q has head_dim {d} but k and v have {dk}")
    if d == 0:
        raise ValueError("head_dim must be at least 1")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"the {Hkv} key/value heads must divide the {Hq} query heads "
                         f"(grouped-query attention)")
    return q, k, v, squeeze


def _check_scale(scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number; got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}")
    return scale


def _check_kv_lens(kv_lens, B, Lk, xp):
    """kv_lens as int64 NumPy (validated) or, for CuPy input given on the GPU, an int32 CuPy
    array (values clipped to [0, kv_len] by the kernel)."""
    if kv_lens is None:
        return None
    cupy = sys.modules.get("cupy")
    on_gpu = cupy is not None and isinstance(kv_lens, cupy.ndarray)
    if on_gpu and xp is np:
        raise TypeError("kv_lens is a CuPy array but q, k and v are NumPy arrays")
    arr = kv_lens if on_gpu else np.asarray(kv_lens)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"kv_lens must hold integers; got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"kv_lens must have shape ({B},) (one length per batch entry); got {arr.shape}")
    if on_gpu:
        return arr.astype(np.int32, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() > Lk):
        raise ValueError(f"kv_lens values must lie in [0, {Lk}] (the key length); "
                         f"got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def _lse_dtype(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


# ---------------------------------------------------------------------------------
# NumPy path (generic over xp where it is cheap to be)

# Memory bound of the NumPy path: a block of at most BLOCK_ROWS packed query rows (query
# positions times the query heads of a kv group) against BLOCK_K keys at a time.
BLOCK_ROWS = 128
BLOCK_K = 256


def _numpy_attention(q, k, v, scale, causal, kv_lens, lse_dtype):
    B, Hq, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = np.float64 if q.dtype == np.float64 else np.float32
    out = _alloc.empty((B, Hq, Lq, d), q.dtype, np)
    lse = _alloc.empty((B, Hq, Lq), lse_dtype, np)
    nq_block = max(1, BLOCK_ROWS // G)
    with np.errstate(all="ignore"):
        for b in range(B):
            L = Lk if kv_lens is None else int(kv_lens[b])
            off = L - Lq
            for hk in range(Hkv):
                heads = slice(hk * G, (hk + 1) * G)
                for i0 in range(0, Lq, nq_block):
                    i1 = min(Lq, i0 + nq_block)
                    qb = q[b, heads, i0:i1].astype(acc) * acc(scale)          # (G, nq, d)
                    n_end = min(L, max(i1 + off, 0)) if causal else L
                    m = np.full((G, i1 - i0, 1), -np.inf, acc)
                    s = np.zeros((G, i1 - i0, 1), acc)
                    o = np.zeros((G, i1 - i0, d), acc)
                    rows = np.arange(i0, i1)[:, None]
                    for j0 in range(0, n_end, BLOCK_K):
                        j1 = min(n_end, j0 + BLOCK_K)
                        kb = k[b, hk, j0:j1].astype(acc)
                        vb = v[b, hk, j0:j1].astype(acc)
                        sc = qb @ kb.T                                        # (G, nq, nk)
                        if causal:
                            sc = np.where(np.arange(j0, j1)[None, :] > rows + off, -np.inf, sc)
                        # fmax: a NaN score does not become the max (as in the kernels);
                        # it still makes the row's sum, and so the row, NaN.
                        m_new = np.fmax(m, np.max(sc, axis=-1, keepdims=True, initial=-np.inf,
                                                  where=~np.isnan(sc)))
                        alpha = _state.rescale(m, m_new)
                        p = np.exp(sc - _state.shift(m_new))
                        s = s * alpha + p.sum(axis=-1, keepdims=True)
                        o = o * alpha + p @ vb
                        m = m_new
                    empty = s == 0
                    out[b, heads, i0:i1] = np.where(empty, 0, o / s).astype(q.dtype)
                    lse[b, heads, i0:i1] = np.where(empty, -np.inf,
                                                    _state.shift(m) + np.log(s))[..., 0]
    return out, lse


def _merge_generic(o_parts, l_parts, out_dtype, xp):
    """Merge stacked parts (P, rows, d) / (P, rows) with xp operations (NumPy path, and the
    CuPy fallback for head dims the merge kernel does not take)."""
    acc = np.float64 if (out_dtype == np.float64 or l_parts.dtype == np.float64) else np.float32
    lse = l_parts.astype(acc)
    with np.errstate(all="ignore"):
        m = xp.max(xp.where(xp.isnan(lse), -np.inf, lse), axis=0, keepdims=True)
        w = _state.rescale(lse, m, xp)
        w = xp.where(lse == -np.inf, 0, w)                        # saw no key: nothing
        s = xp.sum(w, axis=0)
        contrib = xp.where((lse == -np.inf)[..., None], 0, w[..., None] * o_parts.astype(acc))
        o = xp.sum(contrib, axis=0)
        empty = s == 0
        out = xp.where(empty[..., None], 0, o / s[..., None]).astype(out_dtype)
        lse_out = xp.where(empty, -np.inf, _state.shift(m[0], xp) + xp.log(s))
    return out, lse_out.astype(acc)


# ---------------------------------------------------------------------------------
# CuPy path

_kernels_cache = {}     # (device, name) -> (cupy.RawKernel, smem)
_occupancy = {}         # (device, name) -> blocks per SM


def _get_kernel(name, line, smem):
    import cupy
    from . import _kernels
    dev = cupy.cuda.runtime.getDevice()
    hit = _kernels_cache.get((dev, name))
    if hit is None:
        if needs_wgmma_arch(line):
            mod = _kernels.arch_module(module_source(line), WGMMA_ARCH)
        else:
            mod = cupy.RawModule(code=module_source(line), options=_kernels.compile_options())
        fn = mod.get_function(name)
        if smem:
            # always: the kernels' few bytes of static shared memory count against the
            # 48 KiB default too
            fn.max_dynamic_shared_size_bytes = smem
        hit = (fn, smem)
        _kernels_cache[(dev, name)] = hit
    return hit[0]


def _blocks_per_sm(fn, name, threads, smem):
    import cupy
    dev = cupy.cuda.runtime.getDevice()
    v = _occupancy.get((dev, name))
    if v is None:
        from cupy_backends.cuda.api import driver
        v = max(1, driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, threads, smem))
        _occupancy[(dev, name)] = v
    return v


def _sm_count():
    from . import _kernels
    return _kernels.sm_count()


def _choose_splits(blocks, n_tiles, capacity, decode):
    """(n_splits, tiles per split): split the key tiles of each (batch, kv head, row block)
    over several blocks when the grid alone does not fill the GPU.  Among the split counts
    that keep at least 2 tiles a split, take the one whose grid fills its last wave best
    (ties: fewer splits).  A decode grid of 2 to DECODE_MIN_WAVES waves splits into pieces
    of at least DECODE_MIN_SPLIT_TILES tiles, up to that many waves."""
    forced = TUNE.get("splits")
    if forced:
        s = max(1, min(int(forced), n_tiles))
        tps = cdiv(n_tiles, s)
        return cdiv(n_tiles, tps), tps
    if decode and 2 * capacity <= blocks < DECODE_MIN_WAVES * capacity:
        s = max(1, min(cdiv(DECODE_MIN_WAVES * capacity, blocks), n_tiles // DECODE_MIN_SPLIT_TILES))
        tps = cdiv(n_tiles, s)
        return cdiv(n_tiles, tps), tps
    if blocks >= 0.9 * capacity or n_tiles <= 1:
        return 1, n_tiles
    # the fewest splits that fill one wave to 95% (then each block streams a long run of
    # keys, and the merge has few parts); else the best-filled wave
    best = None
    for c in range(2, min(n_tiles, 2 * cdiv(capacity, blocks)) + 1):
        tps = cdiv(n_tiles, c)
        s = cdiv(n_tiles, tps)
        total = blocks * s
        eff = total / (cdiv(total, capacity) * capacity)
        if best is None or eff > best[2] + 1e-9:
            best = (s, tps, eff)
        if eff >= 0.95:
            break
    return (best[0], best[1]) if best else (1, n_tiles)


_counter_bufs = {}      # (device, stream) -> zeroed uint32 counters of the split merge


def _counters(n):
    """Arrival counters of finish_splits; the kernel leaves them zeroed after each launch.
    One buffer per stream, so that launches on different streams do not share one."""
    import cupy
    key = (cupy.cuda.runtime.getDevice(), cupy.cuda.get_current_stream().ptr)
    buf = _counter_bufs.get(key)
    if buf is None or buf.size < n:
        buf = cupy.zeros(max(n, 1024), np.uint32)
        _counter_bufs[key] = buf
    return buf


def _estrides(a):
    return tuple(int(s) // a.itemsize for s in a.strides)


def _tc_ready(a):
    """Last dimension contiguous, base and other strides 16-byte aligned (cp.async)."""
    if a.strides[-1] != a.itemsize and a.shape[-1] > 1:
        return False
    if a.data.ptr % 16:
        return False
    return all(abs(s) % 16 == 0 for s in a.strides[:-1])


# Causal, unsplit: the (batch, kv head) pairs are taken in chunks whose K and V fill at most
# this share of L2, each chunk's row blocks heaviest first (attention.cu, block_geometry).
# H200, fp16 causal TFLOP/s against the launch order (bench/ATTENTION_NOTES.md, session 7):
# D 128 S 1024 263 -> 270, S 4096 320 -> 341; D 64 S 4096 287 -> 304 (a share of 0.5: the
# same; a single chunk of all pairs, whose row blocks then read K/V from DRAM, loses).
CAUSAL_CHUNK_L2_SHARE = 0.8


@functools.lru_cache(maxsize=1024)
def _causal_chunks(device, pairs, kv_pair_bytes):
    import cupy
    l2 = cupy.cuda.runtime.getDeviceProperties(device)["l2CacheSize"]
    budget = max(1, int(CAUSAL_CHUNK_L2_SHARE * l2))
    return max(1, min(pairs, cdiv(pairs * kv_pair_bytes, budget)))


@functools.lru_cache(maxsize=1024)
def _launch_plan(device, name, B, Hkv, G, Lq, Lk, d_run, causal, tune):
    """(kernel, threads, smem, row_blocks, n_splits, tiles per split) of one problem shape:
    the kernel config from the tables (or TUNE, whose repr is part of the key), the split
    of the keys over blocks, and the instance with or without split code."""
    if name not in ("float16", "bfloat16"):
        dp = next(x for x in SIMT_DP if x >= d_run)
        kname = simt_kernel_name(name, dp)
        smem = simt_smem(name, dp)
        fn = _get_kernel(kname, simt_kernel_line(name, dp), smem)
        row_blocks = cdiv(G * Lq, 16)
        capacity = _blocks_per_sm(fn, kname, 128, smem) * _sm_count()
        n_splits, tps = _choose_splits(row_blocks * Hkv * B, cdiv(Lk, SIMT_BK), capacity, False)
        return fn, 128, smem, row_blocks, n_splits, tps
    D = _tile_d(d_run)
    decode = Lq <= DECODE_MAX_Q
    if decode:
        cfg = TUNE.get("decode", DECODE)[D]
        if ("decode" not in TUNE and D in DECODE_WIDE and G * Lq > 1
                and cdiv(G * Lq, 16) * Hkv * B >= 2 * _sm_count()):
            cfg = DECODE_WIDE[D]
        # two 16-row tiles when the packed rows need them (their partial outputs must
        # fit the K/V buffers for the final merge of the warps: not at D = 256)
        cfg = cfg._replace(MI=1 if (G * Lq <= 16 or D > 128) else 2)
    else:
        cfg = _prefill_config(D, causal, Lk)
    fn, row_blocks, blocks, n_tiles, capacity, n_splits, tps = _split_plan(name, cfg, B, Hkv, G, Lq, Lk, decode)
    if n_splits > 1 and isinstance(cfg, WSConfig):        # no split code there
        cfg = PREFILL_HOPPER_SPLIT[D]
        fn, row_blocks, blocks, n_tiles, capacity, n_splits, tps = _split_plan(name, cfg, B, Hkv, G, Lq, Lk, False)
    if n_splits == 1 and cfg.WN == 1:
        # the plain instance: no split code, fewer registers
        fn = _get_kernel(*prefill_kernel(name, cfg, 0), cfg.smem)
    elif cfg.WN > 1 and n_splits > 1 and TUNE.get("on_chip", True):
        for s in sorted(ON_CHIP_SPLITS, reverse=True):
            tps_s = cdiv(n_tiles, s)
            if s > n_splits or cdiv(n_tiles, tps_s) != s:
                continue
            if s < n_splits and ("splits" in TUNE or tps_s > ON_CHIP_MAX_TILES):
                continue
            on_chip = _on_chip_instance(name, cfg, s, blocks, capacity)
            if on_chip is not None:
                fn, n_splits, tps = on_chip, s, tps_s
                break
    return fn, cfg.threads, cfg.smem, row_blocks, n_splits, tps


def _split_plan(name, cfg, B, Hkv, G, Lq, Lk, decode):
    """The key split of a tensor-core config: (kernel (the split-capable instance, whose
    occupancy counts; the warp-specialised one has none), row blocks, blocks, key tiles,
    resident blocks, n_splits, tiles per split)."""
    if cfg.WN > 1:
        kname, line = tc_kernel_name(name, cfg, 1), tc_kernel_line(name, cfg, 1)
    else:
        kname, line = prefill_kernel(name, cfg, 0 if isinstance(cfg, WSConfig) else 1)
    fn = _get_kernel(kname, line, cfg.smem)
    row_blocks = cdiv(G * Lq, cfg.BM)
    blocks = row_blocks * Hkv * B
    n_tiles = cdiv(Lk, cfg.BN)
    capacity = _blocks_per_sm(fn, kname, cfg.threads, cfg.smem) * _sm_count()
    n_splits, tps = _choose_splits(blocks, n_tiles, capacity, decode)
    return fn, row_blocks, blocks, n_tiles, capacity, n_splits, tps


def _prefill_config(D, causal, Lk):
    """The prefill kernel config: TUNE's, else the wgmma table on devices that have it,
    else the mma.sync tables."""
    if "prefill" in TUNE:
        return TUNE["prefill"][D]
    from . import _kernels
    short_causal = causal and Lk <= SHORT_CAUSAL_MAX_K
    if D in PREFILL_HOPPER_SPLIT and _kernels.has_wgmma():
        return PREFILL_HOPPER[(D, "short causal" if short_causal else "long")]
    if D == 64 and short_causal:
        return PREFILL_64_SHORT_CAUSAL
    return PREFILL[D]


def _on_chip_instance(name, cfg, n_splits, clusters, capacity):
    """The instance whose n_splits blocks of a row block form a cluster and merge on chip,
    if clusters exist here and those clusters fit on the GPU in as few waves as the plain
    blocks (a cluster needs all its blocks at once within one GPC: on an H200, 30 clusters
    of 4 one-block-an-SM decode blocks, not 32); else None."""
    from . import _kernels
    if not _kernels.has_clusters():
        return None
    kname = tc_kernel_name(name, cfg, n_splits)
    fn = _get_kernel(kname, tc_kernel_line(name, cfg, n_splits), cfg.smem)
    fit = _kernels.max_active_clusters(fn, kname, cfg.threads, cfg.smem, (1, 1, n_splits))
    if fit == 0 or cdiv(clusters, fit) > cdiv(clusters * n_splits, capacity):
        return None
    return fn


def _cupy_attention(q, k, v, scale, causal, kv_lens, want_lse):
    import cupy
    dtype = q.dtype
    name = dtype.name
    B, Hq, Lq, d = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    lse_dtype = _lse_dtype(dtype)
    acc_name = "float64" if name == "float64" else "float32"
    if d > 256:
        raise ValueError(f"head_dim {d} is not supported on the GPU (at most 256); "
                         f"use NumPy arrays for larger head dims")
    out = _alloc.empty((B, Hq, Lq, d), dtype, cupy)
    lse = _alloc.empty((B, Hq, Lq), lse_dtype, cupy) if want_lse else None
    if out.size == 0:
        return out, lse
    if Lk == 0:
        _bits(out)[...] = 0
        if lse is not None:
            lse[...] = -np.inf
        return out, lse
    # The kernels keep the running max of raw scores and need scale > 0.  (Sign flips
    # and copies go through integer views: no arithmetic on 16-bit floats needed.)
    if scale < 0:
        q, scale = _negate(q), -scale
    elif scale == 0:
        q, scale = cupy.zeros_like(q), 1.0

    tc = name in ("float16", "bfloat16")
    d_run = d
    if tc and d % 8:
        d_run = d + (-d) % 8
        q, k, v = (_pad_last(a, d_run) for a in (q, k, v))
    if tc:
        q, k, v = (a if _tc_ready(a) else _contiguous(a) for a in (q, k, v))
    else:
        q, k, v = (a if a.strides[-1] == a.itemsize else _contiguous(a) for a in (q, k, v))
    o_run = out if d_run == d else cupy.empty((B, Hq, Lq, d_run), dtype)

    device = cupy.cuda.runtime.getDevice()
    fn, threads, smem, row_blocks, n_splits, tps = _launch_plan(
        device, name, B, Hkv, G, Lq, Lk, d_run, causal, repr(TUNE))
    chunks = _causal_chunks(device, B * Hkv, 2 * Lk * d_run * k.itemsize) if causal else 1

    kvl = 0 if kv_lens is None else kv_lens
    if kv_lens is not None and not isinstance(kv_lens, cupy.ndarray):
        kvl = cupy.asarray(kv_lens.astype(np.int32))
    null = np.uint64(0)
    if n_splits > 1:
        # partial (o, lse) of every split; the last split block of each row block merges
        acc = np.dtype(acc_name)
        o_part = cupy.empty((n_splits, B, Hq, Lq, d_run), acc)
        lse_part = cupy.empty((n_splits, B, Hq, Lq), acc)
        counters = _counters(row_blocks * Hkv * B)
    else:
        o_part = lse_part = counters = null
    i64, i32, f32 = np.int64, np.int32, np.float32
    args = (q, k, v, o_run, null if lse is None else lse, o_part, lse_part,
            null if kv_lens is None else kvl, counters,
            *(i64(s) for s in _estrides(q)[:3]), *(i64(s) for s in _estrides(k)[:3]),
            *(i64(s) for s in _estrides(v)[:3]), *(i64(s) for s in _estrides(o_run)[:3]),
            i32(B), i32(Hq), i32(Hkv), i32(Lq), i32(Lk), i32(d_run), i32(1 if causal else 0),
            i32(n_splits), i32(tps), i32(chunks), np.float64(scale), f32(scale * LOG2E))
    fn((row_blocks, Hkv, B * n_splits), (threads,), args, shared_mem=smem)
    if o_run is not out:
        _bits(out)[...] = _bits(o_run)[..., :d]
    return out, lse


_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits(a):
    """The same memory as unsigned integers of the element's size."""
    return a.view(_UINT[a.itemsize])


def _contiguous(a):
    import cupy
    return cupy.ascontiguousarray(_bits(a)).view(a.dtype)


def _negate(a):
    import cupy
    sign = np.uint64(1) << np.uint64(8 * a.itemsize - 1)
    return cupy.bitwise_xor(_bits(a), _UINT[a.itemsize](sign)).view(a.dtype)


def _pad_last(a, n):
    """Zero-pad the last axis to n."""
    import cupy
    out = cupy.zeros(a.shape[:-1] + (n,), _UINT[a.itemsize])
    out[..., :a.shape[-1]] = _bits(a)
    return out.view(a.dtype)


@functools.lru_cache(maxsize=None)
def _merge_kernel(device, kind, part, out, acc):
    return _get_kernel(merge_kernel_name(kind, part, out, acc), merge_kernel_line(kind, part, out, acc), 0)


def _cupy_merge(o_list, l_list, stacked, out_dtype, acc_dtype, shape):
    """Merge kernels over CuPy parts of `shape` (..., d) (lses: shape[:-1]); o_list/l_list:
    lists of arrays, or one stacked (P, ...) pair.  A C-contiguous part is passed as it is
    (the kernels see rows x d), others are copied.  Lists of more than 8 parts are merged
    8 at a time into intermediate results in the accumulation dtype (merging is
    associative)."""
    import cupy
    d = shape[-1]
    rows = math.prod(shape[:-1])
    i32, i64 = np.int32, np.int64
    grid = (cdiv(rows, 8),)
    dev = cupy.cuda.runtime.getDevice()
    an = acc_dtype.name
    if stacked:
        o_st = cupy.ascontiguousarray(o_list if o_list.dtype == out_dtype else o_list.astype(out_dtype))
        l_st = cupy.ascontiguousarray(l_list if l_list.dtype == acc_dtype else l_list.astype(acc_dtype))
        out = _alloc.empty(shape, out_dtype, cupy)
        lse = _alloc.empty(shape[:-1], acc_dtype, cupy)
        on = out_dtype.name
        _merge_kernel(dev, "stacked", on, on, an)(
            grid, (256,), (o_st, l_st, i32(o_st.shape[0]), i64(rows * d), i64(rows), out, lse,
                           i64(rows), i32(d)))
        return out, lse
    os_ = [o if (o.dtype == out_dtype and o.flags.c_contiguous) else
           cupy.ascontiguousarray(o.astype(out_dtype, copy=False)) for o in o_list]
    ls_ = [l if (l.dtype == acc_dtype and l.flags.c_contiguous) else
           cupy.ascontiguousarray(l.astype(acc_dtype, copy=False)) for l in l_list]
    while True:
        last = len(os_) <= 8
        groups = [(os_, ls_)] if last else [(os_[i:i + 8], ls_[i:i + 8]) for i in range(0, len(os_), 8)]
        new_o, new_l = [], []
        for go, gl in groups:
            part_t = go[0].dtype
            res_t = out_dtype if last else acc_dtype
            if last:
                out, lse = _alloc.empty(shape, res_t, cupy), _alloc.empty(shape[:-1], acc_dtype, cupy)
            else:
                out, lse = cupy.empty((rows, d), res_t), cupy.empty((rows,), acc_dtype)
            n = len(go)
            _merge_kernel(dev, "list", part_t.name, res_t.name, an)(
                grid, (256,), (*go, *([go[0]] * (8 - n)), *gl, *([gl[0]] * (8 - n)),
                               i32(n), out, lse, i64(rows), i32(d)))
            new_o.append(out)
            new_l.append(lse)
        if last:
            return new_o[0], new_l[0]
        os_, ls_ = new_o, new_l


# ---------------------------------------------------------------------------------
# Public API


def attention(q, k, v, *, scale=None, causal=False, return_lse=False, kv_lens=None):
    r"""Scaled dot-product attention, computed blockwise by the online softmax.

    .. math::

        \mathrm{out}_i = \sum_j \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}\, v_j,
        \qquad s_{ij} = \mathrm{scale}\cdot q_i \cdot k_j

    The keys are walked in blocks.  Each query row keeps the state
    :math:`(m, s)` of the scores seen so far (their maximum and the sum of
    :math:`e^{s_{ij} - m}`) and an unnormalised output; a block that raises
    :math:`m` rescales both by :math:`e^{m_{old} - m_{new}}` (`merge_states`'s
    rule).  The :math:`q_{len} \times kv_{len}` score matrix is never formed:
    memory is bounded by the block size.

    Parameters
    ----------
    q : array, shape (batch, heads, q_len, head_dim) or (heads, q_len, head_dim)
        Queries, as in ``torch.nn.functional.scaled_dot_product_attention``.
        NumPy arrays run the blocked NumPy implementation, CuPy arrays our CUDA
        kernels.
    k, v : array, shape (batch, kv_heads, kv_len, head_dim)
        Keys and values, of q's dtype and number of dimensions.  ``kv_heads``
        must divide ``heads``: query head ``h`` attends to key/value head
        ``h // (heads // kv_heads)`` (grouped-query and multi-query attention).
    scale : float, optional
        Factor applied to ``q . k``; default ``1 / sqrt(head_dim)``.  Any finite
        value, 0 and negative values included.
    causal : bool, optional
        Causal mask aligned to the bottom right (as FlashAttention 2.1 and
        later): query ``i`` attends to keys ``j <= i + L - q_len``, where ``L``
        is the key length (``kv_lens[b]`` when given).  With ``q_len > L`` the
        first ``q_len - L`` query rows see no key.
    return_lse : bool, optional
        Also return the natural-log log-sum-exp of every query row's scores,
        :math:`\log \sum_j e^{s_{ij}}` over the keys it attends to.
    kv_lens : array of int, shape (batch,), optional
        Valid key length of each batch entry (a padded KV cache): keys at
        positions ``>= kv_lens[b]`` are ignored.  Host values are checked to lie
        in ``[0, kv_len]``; a CuPy array is used as it is on the GPU, its values
        clipped to that range.

    Returns
    -------
    out : array, shape of q
        In q's dtype.
    lse : array, shape (batch, heads, q_len) (or (heads, q_len))
        With ``return_lse=True``: float32, or float64 for float64 input.

    Notes
    -----
    A query row that sees no key (causal with ``q_len > kv_len``, ``kv_len == 0``,
    ``kv_lens[b] == 0``) gets output 0 and lse ``-inf``, the values of an empty
    state, so that `merge_attention` ignores it.  A NaN score makes its row
    NaN; so do ``+inf`` scores.

    Accumulation is in float32 (float64 for float64 input).  On the GPU,
    float16 and bfloat16 run on tensor cores (``mma.sync``; on compute
    capability 9.0, ``wgmma`` for queries of more than 16 rows with head_dim
    up to 128, warp-specialised at head_dim 128; float32 accumulation, the
    probabilities rounded to the input type before the product with v, as
    FlashAttention does); head_dim 64 and 128 are the fast
    shapes and any head_dim up to 256 works (dims that are not a multiple of 8
    are zero-padded, at the cost of a copy).  float32 and float64 run a slower
    SIMT kernel in full precision.  Queries of up to 16 rows (decoding) split
    the keys over many thread blocks and merge the parts (flash-decoding; on
    sm_90, where they fit, the blocks of one query block form a cluster and
    merge through shared memory).

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import attention
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((1, 2, 4, 8)) for _ in range(3))
    >>> out = attention(q, k, v)
    >>> s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(8)
    >>> p = np.exp(s - s.max(-1, keepdims=True))
    >>> np.allclose(out, (p / p.sum(-1, keepdims=True)) @ v)
    True
    >>> out, lse = attention(q, k[:, :, :3], v[:, :, :3], causal=True, return_lse=True)
    >>> np.round(lse[0, 0], 4)    # 3 keys, 4 queries, bottom-right aligned: row 0 sees none
    array([   -inf, -0.8459,  0.7729,  1.164 ])
    >>> out[0, 0, 0]
    array([0., 0., 0., 0., 0., 0., 0., 0.])
    """
    xp, _ = _dispatch.namespace(q, k, v)
    q, k, v, squeeze = _validate_attention(q, k, v, xp)
    _check_devices((("q", q), ("k", k), ("v", v),
                    ("kv_lens", kv_lens if hasattr(kv_lens, "device") else None)), xp)
    B, Hq, Lq, d = q.shape
    scale = _check_scale(scale, d)
    kv_lens = _check_kv_lens(kv_lens, B, k.shape[2], xp)
    if xp is np:
        out, lse = _numpy_attention(q, k, v, scale, bool(causal), kv_lens, _lse_dtype(q.dtype))
    else:
        out, lse = _cupy_attention(q, k, v, scale, bool(causal), kv_lens, bool(return_lse))
    if squeeze:
        out = out[0]
        lse = None if lse is None else lse[0]
    return (out, lse) if return_lse else out


def _as_parts(parts, xp, what):
    """A sequence of arrays, or one array stacked along axis 0."""
    if hasattr(parts, "shape") and hasattr(parts, "dtype"):
        arr = xp.asarray(parts)
        if arr.ndim < 1:
            raise ValueError(f"{what} must be a sequence of arrays or an array stacked along axis 0")
        return arr, True
    return [p if type(p) is xp.ndarray else xp.asarray(p) for p in parts], False


def merge_attention(outputs, lses):
    r"""Merge attention results over disjoint key chunks into the result over their union.

    .. math::

        M = \max_c \mathrm{lse}_c, \qquad w_c = e^{\mathrm{lse}_c - M},
        \qquad \mathrm{out} = \frac{\sum_c w_c\, \mathrm{out}_c}{\sum_c w_c},
        \qquad \mathrm{lse} = M + \log \sum_c w_c

    This is the merge of the chunks' online-softmax states (`merge_states`):
    exact up to rounding, so any number of parts in any order, or any tree of
    merges, gives the same result as one `attention` call with
    ``return_lse=True`` over the concatenated keys.  A part with
    ``lse = -inf`` (a chunk in which the row saw no key) contributes nothing,
    whatever its output holds; if every part has ``lse = -inf`` the output is 0
    and the lse ``-inf``.

    Parameters
    ----------
    outputs : sequence of arrays, each (..., q_len, head_dim), or one array
        stacked along axis 0
        Partial outputs (normalised, as `attention` returns them), all of one
        shape; NumPy or CuPy.
    lses : sequence of arrays, each (..., q_len), or one stacked array
        Their natural-log log-sum-exps (``attention(..., return_lse=True)``).

    Returns
    -------
    out : array (..., q_len, head_dim)
        In the result dtype of the outputs.
    lse : array (..., q_len)
        float32, or float64 where an output or an lse is float64.

    Notes
    -----
    The weights follow the library's state rules: with a part of ``lse = +inf``
    the result is NaN (as that part's output is); a NaN lse gives NaN.  On the
    GPU up to 8 separate parts are merged by one kernel that reads each in place
    (no copy, CUDA-graph capturable); more parts are merged 8 at a time through
    float32 (float64) intermediates; a stacked array by one kernel reading the
    stack.  Head dims up to 256 use the kernels, larger ones CuPy operations.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import attention, merge_attention
    >>> rng = np.random.default_rng(1)
    >>> q, k, v = (rng.standard_normal((2, 3, 16)) for _ in range(3))
    >>> k = rng.standard_normal((2, 10, 16)); v = rng.standard_normal((2, 10, 16))
    >>> parts = [attention(q, k[:, a:b], v[:, a:b], return_lse=True) for a, b in [(0, 4), (4, 10)]]
    >>> out, lse = merge_attention([o for o, _ in parts], [l for _, l in parts])
    >>> ref, ref_lse = attention(q, k, v, return_lse=True)
    >>> bool(np.allclose(out, ref) and np.allclose(lse, ref_lse))
    True
    """
    if isinstance(outputs, (str, bytes)) or isinstance(lses, (str, bytes)):
        raise TypeError("outputs and lses must be sequences of arrays")
    flat_o = list(outputs) if not hasattr(outputs, "shape") else [outputs]
    flat_l = list(lses) if not hasattr(lses, "shape") else [lses]
    xp, _ = _dispatch.namespace(*flat_o, *flat_l)
    o_parts, o_stacked = _as_parts(flat_o[0] if hasattr(outputs, "shape") else flat_o, xp, "outputs")
    l_parts, l_stacked = _as_parts(flat_l[0] if hasattr(lses, "shape") else flat_l, xp, "lses")
    n_o = o_parts.shape[0] if o_stacked else len(o_parts)
    n_l = l_parts.shape[0] if l_stacked else len(l_parts)
    if n_o == 0:
        raise ValueError("merge_attention needs at least one part")
    if n_o != n_l:
        raise ValueError(f"got {n_o} outputs but {n_l} lses")
    o_list = [o_parts[i] for i in range(n_o)] if o_stacked else o_parts
    l_list = [l_parts[i] for i in range(n_l)] if l_stacked else l_parts
    for name, arrs in (("outputs", o_list), ("lses", l_list)):
        for a in arrs:
            if a.dtype.name not in _FLOAT_NAMES:
                raise TypeError(f"{name} have dtype {a.dtype}; expected float16, bfloat16, "
                                f"float32 or float64")
    shape = o_list[0].shape
    if len(shape) < 1:
        raise ValueError("outputs must have at least one dimension (head_dim)")
    for o in o_list:
        if o.shape != shape:
            raise ValueError(f"outputs must all have one shape; got {shape} and {o.shape}")
    for l in l_list:
        if l.shape != shape[:-1]:
            raise ValueError(f"lses must have the shape of the outputs less the last "
                             f"dimension, {shape[:-1]}; got {l.shape}")
    _check_devices([(f"outputs[{i}]", o) for i, o in enumerate(o_list)]
                   + [(f"lses[{i}]", l) for i, l in enumerate(l_list)], xp)
    o_dtypes = {o.dtype for o in o_list}
    if len(o_dtypes) == 1:
        out_dtype = o_list[0].dtype
    else:
        names = {dt.name for dt in o_dtypes}
        out_dtype = (np.dtype(np.float64) if "float64" in names else np.dtype(np.float32))
    any64 = out_dtype == np.float64 or any(l.dtype == np.float64 for l in l_list)
    acc_dtype = np.dtype(np.float64 if any64 else np.float32)
    d = shape[-1]
    rows = math.prod(shape[:-1])
    if xp is not np and 0 < d <= 256 and rows > 0:
        if o_stacked and l_stacked:
            return _cupy_merge(o_parts, l_parts, True, out_dtype, acc_dtype, shape)
        return _cupy_merge(o_list, l_list, False, out_dtype, acc_dtype, shape)
    o_st = xp.stack([o.reshape(rows, d) for o in o_list])
    l_st = xp.stack([l.reshape(rows).astype(acc_dtype) for l in l_list])
    out_m, lse_m = _merge_generic(o_st, l_st, out_dtype, xp)
    out = _alloc.empty((rows, d), out_dtype, xp)
    lse = _alloc.empty((rows,), acc_dtype, xp)
    out[...] = out_m
    lse[...] = lse_m
    return out.reshape(shape), lse.reshape(shape[:-1])


def merge_attention_pair(out1, lse1, out2, lse2):
    r"""Merge two attention states: `merge_attention` of ``[out1, out2]``, ``[lse1, lse2]``.

    .. math:: \mathrm{lse} = \log(e^{\mathrm{lse}_1} + e^{\mathrm{lse}_2}), \qquad
              \mathrm{out} = e^{\mathrm{lse}_1 - \mathrm{lse}}\,\mathrm{out}_1
                           + e^{\mathrm{lse}_2 - \mathrm{lse}}\,\mathrm{out}_2

    Parameters
    ----------
    out1, out2 : arrays (..., q_len, head_dim)
    lse1, lse2 : arrays (..., q_len)

    Returns
    -------
    out, lse : arrays
        As `merge_attention`.

    Examples
    --------
    >>> import numpy as np
    >>> from cupy_softmax import merge_attention_pair
    >>> out, lse = merge_attention_pair(np.ones((1, 2)), np.zeros(1), np.zeros((1, 2)), np.full(1, -np.inf))
    >>> out, lse
    (array([[1., 1.]]), array([0.]))
    """
    return merge_attention([out1, out2], [lse1, lse2])
