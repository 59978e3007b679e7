// attention_softmax.cuh -- the online-softmax step of the attention kernels, in registers.
//
// The (m, s) state of cupy_softmax/_state.py and online_softmax.cuh, kept per query row
// for the accumulator fragments of mma.sync m16n8k16 (as FlashAttention's softmax.h):
//
//   * A thread holds, for each of its MI m-tiles of 16 rows, the two rows g and g + 8
//     (g = lane / 4).  Scores of a row are spread over the 4 lanes of a quad, two
//     adjacent keys per 8-key n-tile.
//   * m is the running maximum of the *raw* scores q.k (masked keys are -inf), so the
//     scale must be >= 0 (the front end flips the sign of q for a negative scale and
//     never passes 0 -- see _attention.py).  The terms are
//         p = 2^(s * scale_log2 - shift(m) * scale_log2),   scale_log2 = scale * log2(e)
//     one FFMA and one MUFU.EX2 per score, shift(m) = m if finite else 0 (the library's
//     rule: a row that has seen no key keeps m = -inf, s = 0 and no NaN appears).
//   * l is this thread's partial sum of p; the quad reduction happens once, at the end.
//   * When a new tile raises the max, l and the output accumulator o are rescaled by
//         alpha = 2^((m_old - shift(m_new)) * scale_log2)    (0 when m_old = -inf)
//
// Finalisation: l is summed over the quad, o /= l (0 where l == 0: a row that saw no
// key gives output 0), and the natural-log log-sum-exp is
//         lse = shift(m) * scale + ln(l)          (-inf where l == 0)
// A NaN score makes l NaN and the row NaN; +inf scores give NaN rows as well.
#pragma once

#include "online_softmax.cuh"

namespace csattn {

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

__device__ __forceinline__ float shift_scaled(float m, float scale_log2) {
    return cs::is_finite(m) ? m * scale_log2 : 0.0f;
}

// alpha that moves a sum taken at max m_old to max m_new (both raw scores).
__device__ __forceinline__ float rescale_factor(float m_old, float ms_new, float scale_log2) {
    return cs::is_finite(m_old) ? cs::ex2_ftz(fmaf(m_old, scale_log2, -ms_new)) : 0.0f;
}

template <int MI>
struct RowState {
    float m[MI][2];   // running max of raw scores, per row (identical over the quad)
    float l[MI][2];   // this thread's partial sum of 2^(...) terms
    __device__ __forceinline__ void init() {
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) { m[mi][h] = cs::neg_inf<float>(); l[mi][h] = 0.0f; }
    }
};

// One tile: S holds the raw scores of MI x 16 rows by NT x 8 keys (accumulator layout,
// masked keys already -inf); on return S holds the unnormalised probabilities p, l has been
// rescaled to the new max, and alpha holds the factor the output accumulator still needs
// (rescale_output: a pipelined kernel applies it once its product into O has landed).
// FIRST: the first tile of a row block, whose state is still empty (alpha 0, O zero).
template <int MI, int NT, bool FIRST>
__device__ __forceinline__ void softmax_update(float (&S)[MI][NT][4], RowState<MI>& st, float scale_log2,
                                               float (&alpha)[MI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = st.m[mi][h];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(S[mi][nt][2 * h], S[mi][nt][2 * h + 1]));
            mx = quad_max(mx);
            const float ms = shift_scaled(mx, scale_log2);
            float sum = 0.0f;
            alpha[mi][h] = 0.0f;
            if constexpr (!FIRST) {
                alpha[mi][h] = rescale_factor(st.m[mi][h], ms, scale_log2);
                sum = st.l[mi][h] * alpha[mi][h];
            }
            st.m[mi][h] = mx;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const float p0 = cs::ex2_ftz(fmaf(S[mi][nt][2 * h], scale_log2, -ms));
                const float p1 = cs::ex2_ftz(fmaf(S[mi][nt][2 * h + 1], scale_log2, -ms));
                S[mi][nt][2 * h] = p0;
                S[mi][nt][2 * h + 1] = p1;
                sum += p0 + p1;
            }
            st.l[mi][h] = sum;
        }
    }
}

template <int MI, int DT>
__device__ __forceinline__ void rescale_output(float (&O)[MI][DT][4], const float (&alpha)[MI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            O[mi][dt][0] *= alpha[mi][0]; O[mi][dt][1] *= alpha[mi][0];
            O[mi][dt][2] *= alpha[mi][1]; O[mi][dt][3] *= alpha[mi][1];
        }
}

// The whole step: the update, then O rescaled at once.
template <int MI, int NT, int DT, bool FIRST>
__device__ __forceinline__ void online_softmax_step(float (&S)[MI][NT][4], float (&O)[MI][DT][4],
                                                    RowState<MI>& st, float scale_log2) {
    float alpha[MI][2];
    softmax_update<MI, NT, FIRST>(S, st, scale_log2, alpha);
    if constexpr (!FIRST) rescale_output<MI, DT>(O, alpha);
}

// Row totals over the quad (call with the whole warp), then 1/l and the lse.
template <int MI>
__device__ __forceinline__ void finalize_rows(RowState<MI>& st, float scale, float (&inv)[MI][2],
                                              float (&lse)[MI][2]) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float l = quad_sum(st.l[mi][h]);
            st.l[mi][h] = l;
            const bool empty = (l == 0.0f);                  // NaN l is not empty: NaN out
            inv[mi][h] = empty ? 0.0f : 1.0f / l;
            const float m = st.m[mi][h];
            lse[mi][h] = empty ? cs::neg_inf<float>()
                               : fmaf(cs::is_finite(m) ? m : 0.0f, scale, logf(l));
        }
}

}  // namespace csattn
