// decode_attention.cu -- split-KV attention for short queries (flash-decoding) and the
// merge of attention states.
//
// Decode: the tensor-core kernel of attention.cu with WM = 1, WN warps that split the keys
// of each tile (a query of Lq <= 16 rows times G grouped heads fills one or two 16-row
// m-tiles; the K/V stream is what costs), and the key tiles spread over n_splits blocks
// per (batch, kv head).  Each split writes its normalised partial output o_s and its lse_s
// in float32, and the partials combine as
//
//     M = max_s lse_s,   w_s = rescale(lse_s, M)   (online_softmax.cuh's rule; 0 for -inf)
//     o = sum_s w_s o_s / sum_s w_s,   lse = shift(M) + log(sum_s w_s)
//
// which is exactly the merge of the (m, s) states of the splits: a part that saw no key
// (lse = -inf) contributes nothing, and any order of parts gives the same result up to
// rounding.  The attention kernel merges its own splits (attention.cu: finish_splits, by
// the last split block to finish, or finish_splits_on_chip, by the splits of a cluster
// from each other's shared memory); the kernels here are the public
// merge_attention: merge_list for up to 8 separate arrays (kernel arguments, so no
// pointer array has to be copied to the device, and CUDA-graph capture works) and
// merge_stacked for one stacked array.  merge_row (attention.cu) does the work.
#pragma once

#include "attention.cu"

namespace csattn {

// Parts stacked: part p of row r at o[p * so + r * d], its lse at l[p * sl + r].
template <typename TP, typename TO, typename A>
__device__ __forceinline__ void merge_stacked(const TP* o, const A* l, int nparts, i64 so, i64 sl,
                                              TO* out, A* lse_out, i64 rows, int d) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    merge_row<TP, TO, A, false, 8>(
        nparts, [&](int pi) { return o + pi * so + row * d; }, [&](int pi) { return l + pi * sl + row; },
        out + row * d, lse_out ? lse_out + row : (A*)0, d, lane);
}

// Up to 8 separate parts (kernel arguments, so no pointer array has to reach the device).
template <typename TP, typename TO, typename A>
__device__ __forceinline__ void merge_list(const TP* o0, const TP* o1, const TP* o2, const TP* o3,
                                           const TP* o4, const TP* o5, const TP* o6, const TP* o7,
                                           const A* l0, const A* l1, const A* l2, const A* l3,
                                           const A* l4, const A* l5, const A* l6, const A* l7,
                                           int nparts, TO* out, A* lse_out, i64 rows, int d) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    auto get_o = [&](int pi) -> const TP* {
        switch (pi) {
            case 0: return o0; case 1: return o1; case 2: return o2; case 3: return o3;
            case 4: return o4; case 5: return o5; case 6: return o6; default: return o7;
        }
    };
    auto get_l = [&](int pi) -> const A* {
        switch (pi) {
            case 0: return l0; case 1: return l1; case 2: return l2; case 3: return l3;
            case 4: return l4; case 5: return l5; case 6: return l6; default: return l7;
        }
    };
    merge_row<TP, TO, A, false, 8>(
        nparts, [&](int pi) { return get_o(pi) + row * d; }, [&](int pi) { return get_l(pi) + row; },
        out + row * d, lse_out + row, d, lane);
}

}  // namespace csattn

// Decode: the tensor-core kernel with one warp row and WN warps along the keys.
#define CS_ATTN_DECODE(NAME, T, D, MI, WN, BNW, STAGES, MINB) \
    CS_ATTN_FWD(NAME, T, D, MI, 1, WN, BNW, STAGES, MINB, 1, 0)

// 256 threads: 8 rows a block.
#define CS_MERGE_STACKED(NAME, TP, TO, A)                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                          \
    NAME(const TP* o, const A* l, int nparts, long long so, long long sl, TO* out, A* lse_out, \
         long long rows, int d) {                                                              \
        csattn::merge_stacked<TP, TO, A>(o, l, nparts, so, sl, out, lse_out, rows, d);         \
    }

#define CS_MERGE_LIST(NAME, TP, TO, A)                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                          \
    NAME(const TP* o0, const TP* o1, const TP* o2, const TP* o3, const TP* o4, const TP* o5,   \
         const TP* o6, const TP* o7, const A* l0, const A* l1, const A* l2, const A* l3,       \
         const A* l4, const A* l5, const A* l6, const A* l7, int nparts, TO* out, A* lse_out,  \
         long long rows, int d) {                                                              \
        csattn::merge_list<TP, TO, A>(o0, o1, o2, o3, o4, o5, o6, o7, l0, l1, l2, l3, l4, l5,  \
                                      l6, l7, nparts, out, lse_out, rows, d);                  \
    }
