#!/usr/bin/env python3
"""Attention kernels on odd shapes, for compute-sanitizer (memcheck, racecheck).

Prefill (float16/bfloat16, head_dim 64/80/128/256, causal, GQA), the Hopper prefill
variants (wgmma, warp-specialised) over many key tiles, decode with kv_lens, the
float32/float64 SIMT path, forced key splits (merged through global memory and on chip)
and merges of 5 and 11 parts.
"""

import cupy as cp
import ml_dtypes
import numpy as np

from cupy_softmax import _attention, _kernels
from cupy_softmax import attention, merge_attention

rng = np.random.default_rng(0)


def random(shape, dtype):
    return cp.asarray(rng.standard_normal(shape).astype(np.float32).astype(dtype))


CASES = [  # (B, Hq, Hkv, Lq, Lk, d, causal, dtype, kv_lens)
    (1, 2, 2, 37, 53, 64, True, np.float16, None),
    (2, 4, 1, 70, 33, 128, True, ml_dtypes.bfloat16, None),
    (1, 2, 1, 19, 45, 80, False, np.float16, None),
    (1, 2, 2, 17, 41, 256, True, np.float16, None),
    (2, 8, 2, 1, 1031, 128, False, np.float16, [1031, 5]),
    (1, 4, 1, 3, 517, 64, True, ml_dtypes.bfloat16, None),
    (1, 2, 2, 5, 33, 256, False, np.float16, [20]),
    (1, 3, 3, 21, 29, 40, True, np.float32, None),
    (1, 2, 1, 2, 300, 72, False, np.float64, [299]),
]


def main():
    for B, Hq, Hkv, Lq, Lk, d, causal, dtype, lens in CASES:
        q = random((B, Hq, Lq, d), dtype)
        k, v = random((B, Hkv, Lk, d), dtype), random((B, Hkv, Lk, d), dtype)
        attention(q, k, v, causal=causal, return_lse=True, kv_lens=lens)
        cp.cuda.Device().synchronize()
        print("ok", B, Hq, Hkv, Lq, Lk, d, causal, np.dtype(dtype).name, flush=True)
    # the Hopper prefill kernels without splits, over more key tiles than K/V slots (every
    # slot reused), causal with q_len < kv_len and kv_lens (Hopper only)
    _attention.TUNE["splits"] = 1
    hopper = [c for c in _attention.CANDIDATES["prefill"][128] if not isinstance(c, _attention.TCConfig)]
    for cfg in hopper if _kernels.has_wgmma() else []:
        _attention.TUNE["prefill"] = {**_attention.PREFILL, 128: cfg}
        for causal in (False, True):
            q = random((2, 4, 150, 128), np.float16)
            k, v = random((2, 2, 700, 128), np.float16), random((2, 2, 700, 128), np.float16)
            attention(q, k, v, causal=causal, return_lse=True, kv_lens=[700, 611])
            cp.cuda.Device().synchronize()
            print("ok", tuple(cfg), "causal" if causal else "", flush=True)
    _attention.TUNE.pop("prefill", None)
    _attention.TUNE["splits"] = 3
    q = random((1, 4, 40, 64), np.float16)
    k, v = random((1, 2, 300, 64), np.float16), random((1, 2, 300, 64), np.float16)
    attention(q, k, v, causal=True, return_lse=True)
    # decode with the splits merged on chip (clusters of 4 and 8) and through global memory
    q = random((2, 8, 2, 128), np.float16)
    k, v = random((2, 2, 1020, 128), np.float16), random((2, 2, 1020, 128), np.float16)
    for splits, on_chip in ((4, True), (8, True), (4, False)):
        _attention.TUNE.update(splits=splits, on_chip=on_chip)
        attention(q, k, v, return_lse=True, kv_lens=[1020, 3])
        cp.cuda.Device().synchronize()
        print("ok decode splits", splits, "on chip" if on_chip else "global", flush=True)
    _attention.TUNE.pop("splits")
    _attention.TUNE.pop("on_chip")
    outputs = [random((3, 5, 24), np.float16) for _ in range(11)]
    lses = [random((3, 5), np.float32) for _ in range(11)]
    merge_attention(outputs[:5], lses[:5])
    merge_attention(outputs, lses)
    cp.cuda.Device().synchronize()
    print("sanitize_attention done", flush=True)


if __name__ == "__main__":
    main()
