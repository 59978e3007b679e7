#!/usr/bin/env python3
"""Run chosen kernels once each between cudaProfilerStart/Stop, for Nsight Compute:

    ncu --profile-from-start off --clock-control none --section SpeedOfLight \\
        --section Occupancy --section WarpStateStats python bench/profile_kernels.py [CASE ...]

Every case runs warmed up (compiled, cached) before the profiled call, and torch's
counterpart (where there is one) runs in the same profiled range, so the report holds both
side by side.  Cases: see CASES (default: all).
"""

import sys

import cupy
import numpy as np

import cupy_softmax
from cupy_softmax._attention import attention

try:
    import torch
except ImportError:      # torch only adds the comparison kernels
    torch = None


def _torch_of(x):
    return torch.from_dlpack(x) if torch is not None else None


def _softmax_case(op, shape, dtype, axis):
    x = cupy.random.standard_normal(shape, dtype=cupy.float32).astype(dtype) * 4
    t = _torch_of(x)
    torch_op = {"softmax": "softmax", "log_softmax": "log_softmax", "logsumexp": "logsumexp"}[op]

    def run():
        getattr(cupy_softmax, op)(x, axis=axis)
        if t is not None:
            getattr(torch, torch_op)(t, axis if axis >= 0 else -1)
    return run


def _decode_case(B, L, hkv, hq=32, d=128, valid=None):
    """valid: every batch entry's kv_lens (None: all keys); 0 leaves only the fixed cost
    of the kernel (launch, prologue, the merge of the warps and of the splits)."""
    rs = cupy.random.RandomState(0)
    q = rs.standard_normal((B, hq, 1, d), dtype=np.float32).astype(np.float16)
    k, v = (rs.standard_normal((B, hkv, L, d), dtype=np.float32).astype(np.float16) for _ in range(2))
    tq, tk, tv = (_torch_of(a) for a in (q, k, v))

    kv_lens = None if valid is None else cupy.full(B, valid, np.int32)

    def run():
        attention(q, k, v, kv_lens=kv_lens)
        if torch is not None and valid is None:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=hkv != hq)
    return run


def _prefill_case(S, D, causal):
    B, H = 32768 // S, 16
    rs = cupy.random.RandomState(1)
    q, k, v = (rs.standard_normal((B, H, S, D), dtype=np.float32).astype(np.float16) for _ in range(3))
    tq, tk, tv = (_torch_of(a) for a in (q, k, v))

    def run():
        attention(q, k, v, causal=causal)
        if torch is not None:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    return run


def _tuned(make, **tune):
    """A case run under _attention.TUNE overrides (e.g. splits=1: no split, no merge)."""
    from cupy_softmax import _attention
    inner = make()

    def run():
        _attention.TUNE.update(tune)
        try:
            inner()
        finally:
            _attention.TUNE.clear()
    return run


CASES = {
    "decode_mha_1x8192": lambda: _decode_case(1, 8192, 32),
    "decode_gqa_1x8192": lambda: _decode_case(1, 8192, 8),
    "decode_gqa_1x131072": lambda: _decode_case(1, 131072, 8),
    "decode_mha_1x8192_nokeys": lambda: _decode_case(1, 8192, 32, valid=0),
    "decode_gqa_1x8192_nokeys": lambda: _decode_case(1, 8192, 8, valid=0),
    "decode_mha_1x8192_onetile": lambda: _decode_case(1, 8192, 32, valid=128),
    "decode_mha_1x8192_nokeys_nosplit": lambda: _tuned(lambda: _decode_case(1, 8192, 32, valid=0), splits=1),
    "decode_mha_1x8192_nosplit": lambda: _tuned(lambda: _decode_case(1, 8192, 32), splits=1),
    "softmax_f32_65536x128": lambda: _softmax_case("softmax", (65536, 128), "float32", -1),
    "softmax_f32_4096x4096": lambda: _softmax_case("softmax", (4096, 4096), "float32", -1),
    "softmax_f32_8192x32000": lambda: _softmax_case("softmax", (8192, 32000), "float32", -1),
    "softmax_f16_32768x1024": lambda: _softmax_case("softmax", (32768, 1024), "float16", -1),
    "logsumexp_f32_4096x4096": lambda: _softmax_case("logsumexp", (4096, 4096), "float32", -1),
    "logsumexp_f16_32768x1024": lambda: _softmax_case("logsumexp", (32768, 1024), "float16", -1),
    "logsumexp_f32_128x131072": lambda: _softmax_case("logsumexp", (128, 131072), "float32", -1),
    "softmax_f32_32768x1024_axis0": lambda: _softmax_case("softmax", (32768, 1024), "float32", 0),
    "softmax_f16_32768x1024_axis0": lambda: _softmax_case("softmax", (32768, 1024), "float16", 0),
    "softmax_f32_8192x32000_axis0": lambda: _softmax_case("softmax", (8192, 32000), "float32", 0),
    "softmax_f16_8192x32000_axis0": lambda: _softmax_case("softmax", (8192, 32000), "float16", 0),
    "logsumexp_f32_32768x1024_axis0": lambda: _softmax_case("logsumexp", (32768, 1024), "float32", 0),
    "logsumexp_f16_32768x1024_axis0": lambda: _softmax_case("logsumexp", (32768, 1024), "float16", 0),
    "logsumexp_f32_8192x32000_axis0": lambda: _softmax_case("logsumexp", (8192, 32000), "float32", 0),
    "prefill_d128_s1024_causal": lambda: _prefill_case(1024, 128, True),
}


def main(names):
    from cupy.cuda import profiler
    for name in names or list(CASES):
        run = CASES[name]()
        for _ in range(3):
            run()
        cupy.cuda.Device().synchronize()
        print(f"=== case {name}", flush=True)
        profiler.start()
        run()
        cupy.cuda.Device().synchronize()
        profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
