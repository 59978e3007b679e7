// attention_wgmma.cu -- the prefill kernels of attention.cu on Hopper's warpgroup MMA.
//
// attn_fwd_wg (every thread loads and computes) and attn_fwd_ws (warp-specialised: a
// producer warpgroup and two ping-ponging consumers, below) have the same rows, keys,
// masks, online softmax and epilogue as attn_fwd (attention.cu), with the two products on
// wgmma (sm_90a only; _attention.py compiles this module for that target):
//
//   * A block is WGS warpgroups (4 warps, 128 threads each) and owns 64 * WGS packed rows;
//     warp w holds rows 16w..16w+15, and a wgmma accumulator holds, per warp, exactly the
//     m16n8 fragments of mma.sync -- so attention_softmax.cuh's step runs on it unchanged.
//   * S = Q K^T: m64nBNk16, A (Q) and B (K) read from shared memory by descriptors;
//     O += P V: m64nDk16, A (P) from registers (the score registers packed to 16 bits,
//     the mma.sync A fragment), B (V) from shared memory, MN-major.
//   * Q, K and V tiles arrive by cp.async in the 128-byte-swizzle layout the descriptors
//     read (tile_offset<..., PANELS>), STAGES buffers deep.  cp.async writes through the
//     generic proxy and wgmma reads through the async proxy: a proxy fence sits between.
//   * Several warpgroups an SM: one's softmax runs beside another's products.
#pragma once

#include "attention.cu"

namespace csattn {

// Register lists of the m64nNk16 float32 accumulator (N / 2 registers a thread), as
// d[N / 8][4] in the mma.sync accumulator layout.
#define CS_WG_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define CS_WG_OUT64(d)  \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),  \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),  \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),  \
    "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define CS_WG_D128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define CS_WG_OUT128(d)  \
    CS_WG_OUT64(d),  \
    "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),  \
    "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),  \
    "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),  \
    "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])

template <typename T, int N> struct Wgmma;

// ss: d (+)= A B^T with A (64 x 16) and B (N x 16) K-major in shared memory; accumulate = 0
// overwrites d.  rs<TRANS_B>: the same with A (64 x 16) in registers (the mma.sync A
// fragment of each warp's 16 rows), B K-major, or MN-major (16 x N) with TRANS_B.  The
// %-numbers after the accumulators depend on N.
#define CS_WG_DEFINE(TY, PTX, N, SS_OPS, RS_OPS, RST_OPS)                                       \
    template <> struct Wgmma<TY, N> {                                                           \
        static __device__ __forceinline__ void ss(float (&d)[N / 8][4], unsigned long long da,  \
                                                  unsigned long long db, int accumulate) {      \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" SS_OPS                            \
                         : CS_WG_OUT##N(d) : "l"(da), "l"(db), "r"(accumulate));                \
        }                                                                                       \
        template <bool TRANS_B>                                                                 \
        static __device__ __forceinline__ void rs(float (&d)[N / 8][4], const u32 (&a)[4],      \
                                                  unsigned long long db, int accumulate) {      \
            if constexpr (TRANS_B)                                                              \
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" RST_OPS                       \
                             : CS_WG_OUT##N(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),    \
                               "l"(db), "r"(accumulate));                                       \
            else                                                                                \
                asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" RS_OPS                        \
                             : CS_WG_OUT##N(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),    \
                               "l"(db), "r"(accumulate));                                       \
        }                                                                                       \
    };
#define CS_WG_SS(N, PTX, A, B, P) \
    P ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " " CS_WG_D##N ", %" A ", %" B ", p, 1, 1, 0, 0;\n}\n"
#define CS_WG_RS(N, PTX, A0, A1, A2, A3, B, P, TB) \
    P ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX "." PTX " " CS_WG_D##N ", {%" A0 ", %" A1 ", %" A2 ", %" A3 "}, %" B ", p, 1, 1, " TB ";\n}\n"
#define CS_WG_ALL(TY, PTX)                                                                      \
    CS_WG_DEFINE(TY, PTX, 64, CS_WG_SS(64, PTX, "32", "33", "34"),                              \
                 CS_WG_RS(64, PTX, "32", "33", "34", "35", "36", "37", "0"),                    \
                 CS_WG_RS(64, PTX, "32", "33", "34", "35", "36", "37", "1"))                    \
    CS_WG_DEFINE(TY, PTX, 128, CS_WG_SS(128, PTX, "64", "65", "66"),                            \
                 CS_WG_RS(128, PTX, "64", "65", "66", "67", "68", "69", "0"),                   \
                 CS_WG_RS(128, PTX, "64", "65", "66", "67", "68", "69", "1"))
CS_WG_ALL(cs::half_t, "f16")
CS_WG_ALL(cs::bf16_t, "bf16")

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// cp.async's shared-memory writes (generic proxy) made visible to wgmma (async proxy)
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Accumulators written by the asynchronous products: the compiler must not read them
// before the wait, nor keep copies across it.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) asm volatile("" : "+f"(d[i][c])::"memory");
}

template <int N>
__device__ __forceinline__ void zero_acc(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) d[i][c] = 0.0f;
}

// mbarriers (shared::cta) of the warp-specialised kernel.
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile("{\n.reg .pred done;\nWAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "@!done bra WAIT;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// The barrier's pending count drops by one when all of this thread's earlier cp.async land.
__device__ __forceinline__ void cp_async_arrive(u32 bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
template <int N> __device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride
// byte offsets (16-byte units).  K-major tiles: rows of 128 bytes, 8-row groups 1024 bytes
// apart (SBO), LBO unused; MN-major: SBO between groups of 8 k-rows, LBO between 64-column
// panels.
__device__ __forceinline__ unsigned long long smem_desc(u32 addr, u32 lbo, u32 sbo) {
    return (unsigned long long)((addr & 0x3FFFFu) >> 4) | ((unsigned long long)(lbo >> 4) << 16)
           | ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

// Q's A fragments of rows rbase + lane/4 (+8) (the mma.sync layout), k-step kk in qa[kk]:
// columns 16kk + 2(lane%4) (+8); zero past the R rows and the d columns.
template <int KD>
__device__ __forceinline__ void load_q_fragments(u32 (&qa)[KD][4], const FwdParams& p, const Geometry& g,
                                                 const HeadPtrs<unsigned short>& hp, int rbase, int lane) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rr = rbase + (lane >> 2) + 8 * h;
        const unsigned short* qrow = hp.q;
        if (rr < g.R) {
            const int i = g.G == 1 ? rr : rr / g.G, gq = rr - i * g.G;
            qrow = hp.q + (i64)gq * p.q_sh + (i64)i * p.q_ss;
        }
#pragma unroll
        for (int kk = 0; kk < KD; ++kk)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int col = 16 * kk + 8 * half + 2 * (lane & 3);
                qa[kk][h + 2 * half] = (rr < g.R && col < p.d) ? *reinterpret_cast<const u32*>(qrow + col) : 0u;
            }
    }
}

// S = Q K^T of one key tile (K at kb; Q in registers, or at sQw): k-step kk reads 32 bytes
// of every row, in panel kk / 4.  Issued and committed, not waited for.
template <typename T, int D, int BN, int BM, bool QREG, int KD>
__device__ __forceinline__ void issue_scores(float (&S)[BN / 8][4], const u32 (&qa)[KD][4], u32 sQw, u32 kb) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const unsigned long long kd = smem_desc(kb + (kk >> 2) * BN * 128 + (kk & 3) * 32, 16, 1024);
        if constexpr (QREG) Wgmma<T, BN>::template rs<false>(S, qa[kk], kd, kk > 0);
        else Wgmma<T, BN>::ss(S, smem_desc(sQw + (kk >> 2) * BM * 128 + (kk & 3) * 32, 16, 1024), kd, kk > 0);
    }
    wg_commit();
}

// O += P V of one key tile (V at vb): k-step kk takes keys 16kk.. (2048 bytes into the tile).
// Issued and committed, not waited for.
template <typename T, int D, int BN>
__device__ __forceinline__ void issue_pv(float (&O)[D / 8][4], const u32 (&P)[BN / 16][4], u32 vb) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
        Wgmma<T, D>::template rs<true>(O, P[kk], smem_desc(vb + kk * 2048, BN * 128, 1024), 1);
    wg_commit();
}

// One key tile t of a warpgroup, its K and V at kb and vb (and Q at sQw unless QREG):
// S = Q K^T, masks, the online-softmax step (which rescales O unless first), O += P V.
// Waits for both products; K and V may be overwritten once it returns.
template <typename T, int D, int BN, int BM, bool QREG, int KD>
__device__ __forceinline__ void wg_tile(float (&S)[1][BN / 8][4], float (&O)[1][D / 8][4], RowState<1>& st,
                                        const u32 (&qa)[KD][4], u32 sQw, u32 kb, u32 vb, int t, bool first,
                                        const Geometry& g, const int (&lim)[1][2], int lane, float sl2) {
    constexpr int NT = BN / 8, DT = D / 8;
    wg_fence();
    issue_scores<T, D, BN, BM, QREG>(S[0], qa, sQw, kb);
    wg_wait<0>();
    pin<NT>(S[0]);
    if ((t + 1) * BN > g.mask_from) mask_tile<1, NT>(S, lim, t * BN + 2 * (lane & 3));
    if (first) online_softmax_step<1, NT, DT, true>(S, O, st, sl2);
    else online_softmax_step<1, NT, DT, false>(S, O, st, sl2);
    u32 P[BN / 16][4];
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) pack_a<T>(P[kk], S[0][2 * kk], S[0][2 * kk + 1]);
    pin<DT>(O[0]);
    wg_fence();
    issue_pv<T, D, BN>(O[0], P, vb);
    wg_wait<0>();
    pin<DT>(O[0]);
}

// WGS warpgroups of 64 rows each share the block's K/V tiles (fewer L2 reads per product);
// QREG: Q held in registers as A fragments (D / 4 registers a thread, loaded once from
// global memory) instead of a shared-memory tile: more blocks fit an SM.
template <int D, int BN, int STAGES, bool QREG, int WGS>
struct WgCfg {
    static constexpr int THREADS = 128 * WGS, BM = 64 * WGS;
    static constexpr int NT = BN / 8, DT = D / 8, KD = D / 16, KN = BN / 16;
    static constexpr int Q_BYTES = QREG ? 0 : BM * D * 2, KV_BYTES = BN * D * 2;
    // + 1024: the swizzle atoms must start 1024-byte aligned
    static constexpr int SMEM_BYTES = Q_BYTES + 2 * STAGES * KV_BYTES + 1024;
    static_assert(D == 64 || D == 128, "D: 64 or 128");
    static_assert(BN == 64 || BN == 128, "BN: 64 or 128");
    static_assert((BN * D / 8) % THREADS == 0 && (BM * D / 8) % THREADS == 0, "tile loads");
};

// SPLIT: 0 no split code (n_splits must be 1); 1 splits merged through global memory.
template <typename T, int D, int BN, int STAGES, bool QREG, int WGS, int SPLIT>
__device__ __forceinline__ void attn_fwd_wg(const FwdParams& p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef WgCfg<D, BN, STAGES, QREG, WGS> C;
    constexpr int PD = STAGES - 1, NT = C::NT, DT = C::DT, BM = C::BM;
    extern __shared__ __align__(128) unsigned char smem_raw[];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const Geometry g = block_geometry<BM, BN>(p);
    int lim[1][2];
    row_limits<1>(lim, p, g, g.r0 + warp * 16, lane);
    const HeadPtrs<unsigned short> hp = head_ptrs<unsigned short>(p, g);

    const u32 sQa = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const u32 sKa = sQa + C::Q_BYTES;
    const u32 sVa = sKa + STAGES * C::KV_BYTES;

    u32 qa[QREG ? C::KD : 1][4];
    if constexpr (QREG) {
        load_q_fragments<C::KD>(qa, p, g, hp, g.r0 + warp * 16, lane);
    } else {
        load_q_tile<BM, D, C::THREADS, true>(sQa, hp.q, p, g.r0, g.R, g.G);
    }
#pragma unroll
    for (int s = 0; s < PD; ++s) {
        const int t = g.t_begin + s;
        if (t < g.t_end) {
            load_kv_tile<BN, D, C::THREADS, true>(sKa + s * C::KV_BYTES, hp.k, p.k_ss, t * BN, g.L, p.d);
            load_kv_tile<BN, D, C::THREADS, true>(sVa + s * C::KV_BYTES, hp.v, p.v_ss, t * BN, g.L, p.d);
        }
        cp_async_commit();
    }

    float O[1][DT][4], S[1][NT][4];
    zero_acc<DT>(O[0]);
    zero_acc<NT>(S[0]);
    RowState<1> st;
    st.init();
    const float sl2 = p.scale_log2;

    for (int t = g.t_begin; t < g.t_end; ++t) {
        cp_async_wait<PD - 1>();
        fence_proxy_async();
        __syncthreads();                // tile t landed for all; tile t - 1's buffers are free
        const int tn = t + PD;
        if (tn < g.t_end) {
            const int sn = (tn - g.t_begin) % STAGES;
            load_kv_tile<BN, D, C::THREADS, true>(sKa + sn * C::KV_BYTES, hp.k, p.k_ss, tn * BN, g.L, p.d);
            load_kv_tile<BN, D, C::THREADS, true>(sVa + sn * C::KV_BYTES, hp.v, p.v_ss, tn * BN, g.L, p.d);
        }
        cp_async_commit();
        const u32 slot = ((t - g.t_begin) % STAGES) * C::KV_BYTES;
        const u32 sQw = sQa + (warp >> 2) * 64 * 128;     // this warpgroup's 64 rows of Q
        wg_tile<T, D, BN, BM, QREG>(S, O, st, qa, sQw, sKa + slot, sVa + slot, t, t == g.t_begin, g, lim, lane, sl2);
    }
    cp_async_wait<0>();

    const bool split_out = SPLIT != 0 && p.n_splits > 1;
    store_rows<T, 1, DT>(p, g, O, st, g.r0 + warp * 16, lane, split_out);
    if (split_out) finish_splits<T, float, C::THREADS, D / 32>(p, g.r0, BM, g.R, g.G, g.hk, g.b);
#else
    __trap();          // wgmma: sm_90a only (the dispatch never launches it elsewhere)
#endif
}


// Warp-specialised: warpgroup 0 loads (cp.async, signalled through mbarriers), warpgroups 1
// and 2 compute 64 rows each, Q in registers; no block-wide barrier in the loop.  Each of the
// STAGES slots has a "full" barrier (the producer's 128 threads' copies landed) and an "empty"
// one (both consumers' 256 threads are done with it).  Registers move from the producer (40)
// to the consumers (232).  No split code: split grids take attn_fwd_wg.
template <int D, int BN, int STAGES>
struct WsCfg {
    static constexpr int THREADS = 384, BM = 128, PRODUCER_REGS = 40, CONSUMER_REGS = 232;
    static constexpr int KV_BYTES = BN * D * 2;
    static constexpr int SMEM_BYTES = 2 * STAGES * KV_BYTES + 1024;
    static_assert(D == 64 || D == 128, "D: 64 or 128");
    static_assert(BN == 64 || BN == 128, "BN: 64 or 128");
};

template <typename T, int D, int BN, int STAGES>
__device__ __forceinline__ void attn_fwd_ws(const FwdParams& p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    typedef WsCfg<D, BN, STAGES> C;
    constexpr int NT = BN / 8, DT = D / 8, BM = C::BM;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * STAGES];     // full[s], empty[s]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const Geometry g = block_geometry<BM, BN>(p);
    const HeadPtrs<unsigned short> hp = head_ptrs<unsigned short>(p, g);
    const u32 sKa = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const u32 sVa = sKa + STAGES * C::KV_BYTES;
    const u32 full = smem_u32(bars), empty = full + 8 * STAGES;
    if (tid == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) { mbar_init(full + 8 * s, 128); mbar_init(empty + 8 * s, 256); }
    }
    __syncthreads();

    if (warp < 4) {
        regs_dec<C::PRODUCER_REGS>();
        for (int t = g.t_begin; t < g.t_end; ++t) {
            const int i = t - g.t_begin, s = i % STAGES, round = i / STAGES;
            if (round > 0) mbar_wait(empty + 8 * s, (round - 1) & 1);
            load_kv_tile<BN, D, 128, true>(sKa + s * C::KV_BYTES, hp.k, p.k_ss, t * BN, g.L, p.d);
            load_kv_tile<BN, D, 128, true>(sVa + s * C::KV_BYTES, hp.v, p.v_ss, t * BN, g.L, p.d);
            cp_async_arrive(full + 8 * s);
        }
        cp_async_wait<0>();
        return;
    }
    regs_inc<C::CONSUMER_REGS>();
    const int c = (warp >> 2) - 1;                    // consumer 0 or 1
    const int rbase = g.r0 + (warp - 4) * 16;
    int lim[1][2];
    row_limits<1>(lim, p, g, rbase, lane);
    u32 qa[D / 16][4];
    load_q_fragments<D / 16>(qa, p, g, hp, rbase, lane);
    float O[1][DT][4], S[1][NT][4];
    zero_acc<DT>(O[0]);
    zero_acc<NT>(S[0]);
    u32 P[BN / 16][4];                               // P_{t-1}: the A operand of the product in flight
    RowState<1> st;
    st.init();
    const float sl2 = p.scale_log2;

    // Ping-pong: the consumers take turns issuing their products (named barrier 1 + c is
    // this consumer's turn, opened by the other after it issued), so that one's softmax
    // runs while the other's products occupy the tensor cores.  Consumer 0 goes first.
    auto my_turn = [&] {
        if (c == 0) asm volatile("bar.sync 1, 256;\n" ::: "memory");
        else asm volatile("bar.sync 2, 256;\n" ::: "memory");
    };
    auto your_turn = [&] {
        if (c == 0) asm volatile("bar.arrive 2, 256;\n" ::: "memory");
        else asm volatile("bar.arrive 1, 256;\n" ::: "memory");
    };
    if (c == 1) your_turn();
    auto pack_p = [&] {
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) pack_a<T>(P[kk], S[0][2 * kk], S[0][2 * kk + 1]);
    };
    // Tile t_begin: S alone.  Then iteration t issues S_t and P_{t-1} V_{t-1} together, takes
    // the softmax of S_t while the second product runs, rescales O once it landed and frees
    // slot t - 1.  (The first tile peeled off: a conditional product inside the loop makes
    // ptxas serialise every wgmma.)
    if (g.t_begin < g.t_end) {
        const int t = g.t_begin;
        mbar_wait(full, 0);
        fence_proxy_async();
        my_turn();
        wg_fence();
        issue_scores<T, D, BN, BM, true>(S[0], qa, 0u, sKa);
        your_turn();
        wg_wait<0>();
        pin<NT>(S[0]);
        float alpha[1][2];
        if ((t + 1) * BN > g.mask_from) mask_tile<1, NT>(S, lim, t * BN + 2 * (lane & 3));
        softmax_update<1, NT, true>(S, st, sl2, alpha);
        pack_p();
    }
    for (int t = g.t_begin + 1; t < g.t_end; ++t) {
        const int i = t - g.t_begin, s = i % STAGES;
        mbar_wait(full + 8 * s, (i / STAGES) & 1);
        fence_proxy_async();
        const int sp = (i + STAGES - 1) % STAGES;
        my_turn();
        pin<DT>(O[0]);
        wg_fence();
        issue_scores<T, D, BN, BM, true>(S[0], qa, 0u, sKa + s * C::KV_BYTES);
        issue_pv<T, D, BN>(O[0], P, sVa + sp * C::KV_BYTES);
        your_turn();
        float alpha[1][2];
        wg_wait<1>();
        pin<NT>(S[0]);
        if ((t + 1) * BN > g.mask_from) mask_tile<1, NT>(S, lim, t * BN + 2 * (lane & 3));
        softmax_update<1, NT, false>(S, st, sl2, alpha);
        wg_wait<0>();
        pin<DT>(O[0]);
        mbar_arrive(empty + 8 * sp);
        rescale_output<1, DT>(O, alpha);
        pack_p();
    }
    if (g.t_begin < g.t_end) {
        const int sp = (g.t_end - 1 - g.t_begin) % STAGES;
        my_turn();
        pin<DT>(O[0]);
        wg_fence();
        issue_pv<T, D, BN>(O[0], P, sVa + sp * C::KV_BYTES);
        your_turn();
        wg_wait<0>();
        pin<DT>(O[0]);
        mbar_arrive(empty + 8 * sp);
    }
    if (c == 0) my_turn();                           // the other's last opening
    store_rows<T, 1, DT>(p, g, O, st, rbase, lane, false);
#else
    __trap();
#endif
}

}  // namespace csattn

// Entry points: T in cs::half_t, cs::bf16_t; 128 * WGS threads; dynamic shared memory
// WgCfg<D, BN, STAGES, QREG, WGS>::SMEM_BYTES.
#define CS_ATTN_WG(NAME, T, D, BN, STAGES, QREG, WGS, MINB, SPLIT)                             \
    extern "C" __global__ void __launch_bounds__(128 * (WGS), MINB) NAME(CS_ATTN_PARAMS(T)) {  \
        CS_ATTN_FILL(prm)                                                                      \
        csattn::attn_fwd_wg<T, D, BN, STAGES, QREG, WGS, SPLIT>(prm);                          \
    }

// Warp-specialised instances: 384 threads, one block an SM; dynamic shared memory
// WsCfg<D, BN, STAGES>::SMEM_BYTES.
#define CS_ATTN_WS(NAME, T, D, BN, STAGES)                                                     \
    extern "C" __global__ void __launch_bounds__(384, 1) NAME(CS_ATTN_PARAMS(T)) {             \
        CS_ATTN_FILL(prm)                                                                      \
        csattn::attn_fwd_ws<T, D, BN, STAGES>(prm);                                            \
    }
