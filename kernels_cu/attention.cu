// attention.cu -- blocked attention forward: softmax(q k^T * scale) v without the score
// matrix, by the online-softmax state of online_softmax.cuh (see attention_softmax.cuh
// for the step done in registers).  cupy_softmax/_attention.py appends one CS_ATTN_* line
// per entry point it needs and compiles the result with NVRTC through CuPy.
//
// Layout: q (B, Hq, Lq, d), k and v (B, Hkv, Lk, d), any strides with the last dimension
// contiguous; Hq = G * Hkv (grouped-query attention).  A block owns one kv head and BM
// "rows" of the packed row space r = i * G + g (query i of query head hk * G + g), so a
// loaded key serves all the query heads of its group, and the decode case (Lq small, G
// heads) fills the 16-row tiles of the tensor cores.  Bottom-right causal mask: query i
// sees key j iff j <= i + L - Lq, L = the row's key length (kv_lens[b] when given).
//
// attn_fwd: float16 / bfloat16 on tensor cores (mma.sync m16n8k16, fp32 accumulation),
//   Q in shared memory, K/V tiles streamed by cp.async through STAGES buffers (XOR
//   swizzled 16-byte chunks, read by ldmatrix / ldmatrix.trans), S and O in registers.
//   WM x WN warps: WM split the rows (16 * MI each), WN split the keys of a tile (the
//   decode shape: WN partial states merged through shared memory at the end).
//   Key tiles are split over gridDim.z / B blocks (split-KV, flash-decoding) when
//   n_splits > 1: each split writes its normalised partial output and lse (float32), and
//   the last split block of each row block to finish merges them (finish_splits); or,
//   when the splits of a row block are launched as one cluster, they keep their partials
//   in shared memory and merge them from there (finish_splits_on_chip).
// attn_simt: float32 / float64, plain FMA (the slower path), same rows, masks and splits.
#pragma once

#include "online_softmax.cuh"
#include "attention_softmax.cuh"

namespace csattn {

typedef long long i64;
typedef unsigned u32;

struct FwdParams {
    const void* q; const void* k; const void* v; void* o; void* lse;
    void* o_part; void* lse_part; const int* kv_lens; unsigned* counters;
    i64 q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss;
    int batch, hq, hkv, q_len, kv_len, d, causal, n_splits, tiles_per_split;
    int causal_chunks;       // causal, one split: chunks of (batch, kv head) pairs (>= 1)
    double scale;            // the SIMT float64 kernel needs it exact; the others round it
    float scale_log2;
};

// ------------------------------------------------------------------ PTX wrappers
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}
using cs::cp_async_commit;      // the commit / wait of the softmax kernels' staged chunks
using cs::cp_async_wait;
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

template <typename T> struct Mma;
template <> struct Mma<cs::half_t> {
    static __device__ __forceinline__ void run(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r; asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo)); return r;
    }
};
template <> struct Mma<cs::bf16_t> {
    static __device__ __forceinline__ void run(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        u32 r; asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo)); return r;
    }
};

// The m16k16 A fragment of 16-bit probabilities from two adjacent n8 accumulator tiles
// (keys 16k..16k+7 in lo, 16k+8.. in hi): FlashAttention's reuse of S's registers as P.
template <typename T>
__device__ __forceinline__ void pack_a(u32 (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = Mma<T>::pack(lo[0], lo[1]);
    a[1] = Mma<T>::pack(lo[2], lo[3]);
    a[2] = Mma<T>::pack(hi[0], hi[1]);
    a[3] = Mma<T>::pack(hi[2], hi[3]);
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// Block geometry shared by both kernels: which rows, which keys.
struct Geometry {
    int G, R, rb, hk, b, split, L, off, r0, n_end, mask_from, t_begin, t_end;
};

template <int BM, int BN>
__device__ __forceinline__ Geometry block_geometry(const FwdParams& p) {
    Geometry g;
    g.G = p.hq / p.hkv;
    g.R = g.G * p.q_len;
    // causal: the last row blocks see the most keys; start them first
    g.rb = p.causal ? (int)(gridDim.x - 1 - blockIdx.x) : (int)blockIdx.x;
    g.hk = blockIdx.y;
    int z = blockIdx.z;
    if (p.causal && p.n_splits == 1) {
        // Blocks start in launch order (x fastest), which would give every wave a mix of
        // heavy and light blocks and the last wave heavy ones.  Longest first instead:
        // the (batch, kv head) pairs form causal_chunks chunks of about equal size whose
        // K/V fit in L2 together (the host's choice), and the launch index walks a chunk
        // by every pair's heaviest row block, then every pair's next one, ..., so that
        // the blocks that start last are light.
        const i64 X = gridDim.x, pairs = (i64)gridDim.y * gridDim.z, nc = p.causal_chunks;
        const i64 at = blockIdx.x + X * (blockIdx.y + (i64)gridDim.y * blockIdx.z);
        i64 c = at * nc / (X * pairs);             // chunk c: pairs [c * pairs / nc, ...)
        while ((c + 1) * pairs / nc * X <= at) ++c;
        while (c * pairs / nc * X > at) --c;
        const i64 first = c * pairs / nc, width = (c + 1) * pairs / nc - first;
        const i64 in_chunk = at - first * X, pair = first + in_chunk % width;
        g.rb = (int)(X - 1 - in_chunk / width);
        g.hk = (int)(pair % gridDim.y);
        z = (int)(pair / gridDim.y);
    }
    g.b = z / p.n_splits;
    g.split = z - g.b * p.n_splits;
    g.L = p.kv_len;
    if (p.kv_lens) { const int v = p.kv_lens[g.b]; g.L = v < 0 ? 0 : imin(v, p.kv_len); }
    g.off = g.L - p.q_len;
    g.r0 = g.rb * BM;
    const int r_last = imin(g.r0 + BM, g.R) - 1;
    g.n_end = g.L;
    g.mask_from = g.L;                    // keys below mask_from are visible to every row
    if (p.causal) {
        g.n_end = imin(g.L, imax(r_last / g.G + g.off + 1, 0));
        g.mask_from = imin(g.L, imax(g.r0 / g.G + g.off + 1, 0));
    }
    const int n_tiles = (g.n_end + BN - 1) / BN;
    g.t_begin = g.split * p.tiles_per_split;
    g.t_end = imin(n_tiles, g.t_begin + p.tiles_per_split);
    return g;
}

// ------------------------------------------------------------------ merging partial states
// One warp merges one row of d <= 32 * MAXC values from nparts partial results (o_p normalised,
// lse_p natural log), by the state rule of online_softmax.cuh:
//     M = max_p lse_p,  w_p = rescale(lse_p, M),  o = sum w_p o_p / sum w_p,  lse = shift(M) + log sum w_p
// A part with lse = -inf contributes nothing, whatever its o_p holds (its value is replaced
// by 0 before the product, so a NaN there cannot leak).  The lse of 32 parts (one per lane)
// and the o values of the first PB parts are loaded before any of them is used, so a row of
// up to PB parts costs one memory latency (the o loads do not wait for the weights); each
// further PB parts cost one more.  The first group's part indices are constants, so a
// caller's part lookup (a switch over kernel arguments) folds away.  CG: read through L2
// only (partials written by other blocks of the same launch).  MAXC (columns a lane) as
// small as the head dim allows: the split finish is on the decode's critical path, and
// D = 128 needs half the loads and products of d <= 256.
template <bool CG, typename TP>
__device__ __forceinline__ TP load_part(const TP* p) {
    if constexpr (CG) return cs::ld_cg(p);
    else return *p;
}

template <typename TP, typename TO, typename A, bool CG, int MAXC, typename GetO, typename GetL>
__device__ __forceinline__ void merge_row(int nparts, GetO get_o, GetL get_l, TO* out, A* lse_out,
                                          int d, int lane) {
    constexpr int PB = 8;                                // parts in flight
    const A ninf = cs::neg_inf<A>();
    // As loaded (16-bit values converted only where used: a conversion right after
    // each load would make the next load wait for it).
    TP vals[PB][MAXC];
    auto load_group = [&](int p0) {
#pragma unroll
        for (int j = 0; j < PB; ++j)
#pragma unroll
            for (int k = 0; k < MAXC; ++k) {
                const int c = lane + 32 * k;
                vals[j][k] = (p0 + j < nparts && c < d) ? load_part<CG>(get_o(p0 + j) + c) : TP{};
            }
    };
    A l = lane < nparts ? load_part<CG>(get_l(lane)) : ninf;
    load_group(0);
    A M = l;
    for (int p = 32 + lane; p < nparts; p += 32) M = cs::max_nf(M, load_part<CG>(get_l(p)));
    M = cs::warp_allreduce<cs::MaxOp>(M, 32);
    A acc[MAXC];
#pragma unroll
    for (int k = 0; k < MAXC; ++k) acc[k] = A(0);
    A S = A(0);
    for (int q0 = 0; q0 < nparts; q0 += 32) {            // lane j holds part q0 + j
        if (q0 > 0) l = q0 + lane < nparts ? load_part<CG>(get_l(q0 + lane)) : ninf;
        const A w = (l == ninf) ? A(0) : cs::rescale(l, M);
        S = cs::add_nf(S, w);
        const int qn = imin(nparts - q0, 32);
        for (int g0 = 0; g0 < qn; g0 += PB) {
            if (q0 + g0 > 0) load_group(q0 + g0);
#pragma unroll
            for (int j = 0; j < PB; ++j) {
                // parts past nparts: l = -inf on their lane, so they add 0
                const A wj = __shfl_sync(0xffffffffu, w, g0 + j);
                const bool none = __shfl_sync(0xffffffffu, l, g0 + j) == ninf;
#pragma unroll
                for (int k = 0; k < MAXC; ++k) acc[k] = fma(wj, none ? A(0) : (A)cs::to_acc(vals[j][k]), acc[k]);
            }
        }
    }
    S = cs::warp_allreduce<cs::SumOp>(S, 32);
    const bool empty = cs::is_zero(S);
    const A inv = empty ? A(0) : A(1) / S;
#pragma unroll
    for (int k = 0; k < MAXC; ++k) {
        const int c = lane + 32 * k;
        if (c < d) out[c] = cs::Conv<TO>::from(acc[k] * inv);
    }
    if (lane == 0 && lse_out) *lse_out = empty ? ninf : cs::shift(M) + cs::log_acc(S);
}

// Where the merged packed row r of a split row block goes: its output row, its lse (or
// null), and its index among the (batch, head, query) rows.
template <typename TO, typename A>
struct OutRow {
    TO* o;
    A* lse;
    i64 row;
};
template <typename TO, typename A>
__device__ __forceinline__ OutRow<TO, A> out_row(void* o_, void* lse_, i64 o_sb, i64 o_sh, i64 o_ss,
                                                 int hq, int q_len, int r, int G, int hk, int b) {
    const int i = r / G, head = hk * G + (r - i * G);
    const i64 row = ((i64)b * hq + head) * q_len + i;
    return {reinterpret_cast<TO*>(o_) + (i64)b * o_sb + (i64)head * o_sh + (i64)i * o_ss,
            lse_ ? reinterpret_cast<A*>(lse_) + row : (A*)0, row};
}

// Split-KV finish through global memory, called by the whole block after it wrote its
// partial (o, lse) rows: the last of the n_splits blocks of a (batch, kv head, row block)
// to arrive merges the partials into the output (counter pattern of CUDA's
// threadFenceReduction sample; the last block resets the counter, so the buffer stays
// zeroed for the next launch).
template <typename TO, typename A, int THREADS, int MAXC>
__device__ __noinline__ void finish_splits(void* o_, void* lse_, const void* o_part_, const void* lse_part_,
                                           unsigned* counters, i64 o_sb, i64 o_sh, i64 o_ss,
                                           int batch, int hq, int hkv, int q_len, int d, int n_splits,
                                           int r0, int rows_in_block, int R, int G, int hk, int b) {
    // Not inlined (and given scalars, not the parameter struct): the merge's registers do
    // not weigh on the main loop's allocation.
    __shared__ int s_last;
    // bar.sync orders every thread's partial writes before thread 0's release (which is
    // cumulative, as in CUTLASS's semaphore); its acquire orders the other splits'
    // writes before the last block's reads (thread 0's, then the block's after bar.sync).
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned* c = counters + ((i64)b * hkv + hk) * gridDim.x + blockIdx.x;
        s_last = (cs::arrive_acq_rel(c) == (unsigned)(n_splits - 1));
        if (s_last) *c = 0u;                       // every split has counted itself in
    }
    __syncthreads();
    if (!s_last) return;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 pstride = (i64)batch * hq * q_len;
    const A* op = reinterpret_cast<const A*>(o_part_);
    const A* lp = reinterpret_cast<const A*>(lse_part_);
    for (int rl = warp; rl < rows_in_block; rl += THREADS / 32) {
        const int r = r0 + rl;
        if (r >= R) break;
        const OutRow<TO, A> dst = out_row<TO, A>(o_, lse_, o_sb, o_sh, o_ss, hq, q_len, r, G, hk, b);
        merge_row<A, TO, A, true, MAXC>(
            n_splits, [&](int pi) { return op + (pi * pstride + dst.row) * d; },
            [&](int pi) { return lp + pi * pstride + dst.row; }, dst.o, dst.lse, d, lane);
    }
}

template <typename TO, typename A, int THREADS, int MAXC>
__device__ __forceinline__ void finish_splits(const FwdParams& p, int r0, int rows_in_block, int R,
                                              int G, int hk, int b) {
    finish_splits<TO, A, THREADS, MAXC>(p.o, p.lse, p.o_part, p.lse_part, p.counters, p.o_sb, p.o_sh, p.o_ss,
                                  p.batch, p.hq, p.hkv, p.q_len, p.d, p.n_splits, r0, rows_in_block,
                                  R, G, hk, b);
}

// Split-KV finish on chip: the CL splits of a row block are the CL blocks of one cluster
// (rank = split), each holds its partial rows in its own shared memory (part_o [rows][ld],
// part_l [rows]); after a cluster barrier, rows are shared out over the cluster's warps
// and merged from the peers' shared memory.  No global partials, no atomics: about the
// two L2 round trips of finish_splits less at the end of the kernel.
template <typename TO, int CL, int THREADS, int MAXC>
__device__ __forceinline__ void finish_splits_on_chip(const FwdParams& p, float* part_o, float* part_l,
                                                      int ld, int rank, int r0, int rows_in_block,
                                                      int R, int G, int hk, int b) {
    cs::cluster_arrive();                          // this block's partials (release) ...
    cs::cluster_wait();                            // ... and every peer's are visible
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int rl = warp * CL + rank; rl < rows_in_block; rl += (THREADS / 32) * CL) {
        const int r = r0 + rl;
        if (r >= R) break;
        const OutRow<TO, float> dst = out_row<TO, float>(p.o, p.lse, p.o_sb, p.o_sh, p.o_ss, p.hq, p.q_len,
                                                         r, G, hk, b);
        // (ranks clamped: merge_row may form the address of a part past CL, never load it)
        merge_row<float, TO, float, false, MAXC>(
            CL, [&](int pi) { return cs::peer_ptr(part_o + rl * ld, imin(pi, CL - 1)); },
            [&](int pi) { return cs::peer_ptr(part_l + rl, imin(pi, CL - 1)); }, dst.o, dst.lse, p.d, lane);
    }
    cs::cluster_arrive_relaxed();                  // done reading the peers: they may leave
    cs::cluster_wait();
}

// ------------------------------------------------------------------ tensor-core kernel
template <int D, int MI, int WM, int WN, int BNW, int STAGES>
struct FwdCfg {
    static constexpr int WARPS = WM * WN, THREADS = 32 * WARPS;
    static constexpr int BM = 16 * MI * WM, BN = BNW * WN;
    static constexpr int NT = BNW / 8, DT = D / 8, KD = D / 16, KN = BNW / 16;
    static constexpr int CPR = D / 8;                    // 16-byte chunks per row
    static constexpr int Q_ELEMS = BM * D, KV_ELEMS = BN * D;
    static constexpr int SMEM_BYTES = (Q_ELEMS + 2 * STAGES * KV_ELEMS) * 2;
    // the warps' merge: rows padded by 8 floats, so that a quad's float2 stores of 8 rows
    // fall in distinct banks
    static constexpr int RED_LD = D + 8;
    static constexpr int RED_FLOATS = WN > 1 ? WN * BM * RED_LD + 2 * WN * BM : 0;
    static constexpr int PART_FLOATS = WN > 1 ? BM * D + BM : 0;   // the on-chip split finish
    static_assert(D % 64 == 0, "D: 64, 128 or 256 (the swizzle needs 8 chunks a row)");
    static_assert(BNW % 16 == 0, "BNW: a multiple of 16");
    static_assert((RED_FLOATS + PART_FLOATS) * 4 <= 2 * STAGES * KV_ELEMS * 2,
                  "WN reduction and partial rows must fit the K/V buffers");
    static_assert((BN * CPR) % THREADS == 0 && (BM * CPR) % THREADS == 0, "tile loads");
};

// Where 16-byte chunk ch of row r of a ROWS x D tile lives (byte offset).  Rows of D
// elements, chunk ch at ch ^ (r & 7) (conflict-free ldmatrix); or PANELS: D / 64 panels of
// ROWS x 128 bytes, chunk ch & 7 at (ch & 7) ^ (r & 7) -- the 128-byte-swizzle layout that
// wgmma's shared-memory descriptors read (attention_wgmma.cu).  For D = 64 both coincide.
template <int ROWS, int D, bool PANELS>
__device__ __forceinline__ u32 tile_offset(int r, int ch) {
    if constexpr (PANELS) return (u32)((ch >> 3) * ROWS * 128 + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
    else return (u32)((r * D + ((ch ^ (r & 7)) << 3)) * 2);
}

// A BN x D tile of K or V, rows row0.. of the key axis; rows >= n_valid and columns >= d
// are zero-filled.
template <int ROWS, int D, int THREADS, bool PANELS = false>
__device__ __forceinline__ void load_kv_tile(u32 s_base, const unsigned short* g, i64 row_stride,
                                             int row0, int n_valid, int d) {
    constexpr int CPR = D / 8, TOTAL = ROWS * CPR, RPI = THREADS / CPR;   // rows an iteration
    const int rb = (int)threadIdx.x / CPR, ch = (int)threadIdx.x % CPR;
    const bool col_ok = ch * 8 < d;
    // One running pointer (not one precomputed offset per iteration: fewer live registers).
    const unsigned short* src = g + (i64)(row0 + rb) * row_stride + ch * 8;
    const i64 step = (i64)RPI * row_stride;
#pragma unroll
    for (int it = 0; it < TOTAL / THREADS; ++it) {
        const int r = rb + it * RPI;
        const bool ok = col_ok && row0 + r < n_valid;
        cp_async16(s_base + tile_offset<ROWS, D, PANELS>(r, ch), ok ? src : g, ok ? 16 : 0);
        src += step;
    }
}

// The BM packed rows r0.. of Q (zero past the R rows and the d columns).
template <int BM, int D, int THREADS, bool PANELS = false>
__device__ __forceinline__ void load_q_tile(u32 s_base, const unsigned short* qg, const FwdParams& p,
                                            int r0, int R, int G) {
    constexpr int CPR = D / 8, TOTAL = BM * CPR;
#pragma unroll
    for (int it = 0; it < TOTAL / THREADS; ++it) {
        const int c = it * THREADS + (int)threadIdx.x;
        const int r = c / CPR, ch = c % CPR;
        const int rr = r0 + r;
        const bool ok = rr < R && ch * 8 < p.d;
        const unsigned short* src = qg;
        if (ok) {
            const int i = G == 1 ? rr : rr / G, gq = rr - i * G;
            src = qg + (i64)gq * p.q_sh + (i64)i * p.q_ss + ch * 8;
        }
        cp_async16(s_base + tile_offset<BM, D, PANELS>(r, ch), src, ok ? 16 : 0);
    }
}

// The base of this block's q rows (kv head hk's group), k and v (kv head hk); E: the
// element type as stored (16-bit values as unsigned short).
template <typename E>
struct HeadPtrs { const E *q, *k, *v; };
template <typename E>
__device__ __forceinline__ HeadPtrs<E> head_ptrs(const FwdParams& p, const Geometry& g) {
    return {reinterpret_cast<const E*>(p.q) + (i64)g.b * p.q_sb + (i64)g.hk * g.G * p.q_sh,
            reinterpret_cast<const E*>(p.k) + (i64)g.b * p.k_sb + (i64)g.hk * p.k_sh,
            reinterpret_cast<const E*>(p.v) + (i64)g.b * p.v_sb + (i64)g.hk * p.v_sh};
}

// Key limits of this thread's rows (mi, h) -> packed row rbase + mi*16 + lane/4 + 8h.
template <int MI>
__device__ __forceinline__ void row_limits(int (&lim)[MI][2], const FwdParams& p, const Geometry& g,
                                           int rbase, int lane) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = rbase + mi * 16 + (lane >> 2) + 8 * h;
            const int i = g.G == 1 ? r : r / g.G;
            lim[mi][h] = p.causal ? imin(g.L, i + g.off + 1) : g.L;
        }
}

// Scores of keys at or past a row's limit become -inf (S: accumulator layout, key n0 + 8 nt
// + (c & 1) in S[mi][nt][c]); only tiles that reach past mask_from need it.
template <int MI, int NT>
__device__ __forceinline__ void mask_tile(float (&S)[MI][NT][4], const int (&lim)[MI][2], int n0) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (n0 + nt * 8 + (c & 1) >= lim[mi][c >> 1]) S[mi][nt][c] = cs::neg_inf<float>();
}

// Epilogue of a warp that holds whole rows (rows rbase + mi*16 + lane/4 + 8h): the output
// (or, split_out, the float32 partial output and lse of this split) straight from registers.
template <typename T, int MI, int DT>
__device__ __forceinline__ void store_rows(const FwdParams& p, const Geometry& g, float (&O)[MI][DT][4],
                                           RowState<MI>& st, int rbase, int lane, bool split_out) {
    float inv[MI][2], lse[MI][2];
    finalize_rows<MI>(st, (float)p.scale, inv, lse);
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = rbase + mi * 16 + (lane >> 2) + 8 * h;
            if (r >= g.R) continue;
            const int i = r / g.G, head = g.hk * g.G + (r - i * g.G);
            const i64 row = ((i64)g.b * p.hq + head) * p.q_len + i;
            const int col = 2 * (lane & 3);
            if (!split_out) {
                T* orow = reinterpret_cast<T*>(p.o) + (i64)g.b * p.o_sb + (i64)head * p.o_sh + (i64)i * p.o_ss;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    if (dt * 8 < p.d)
                        *reinterpret_cast<u32*>(orow + dt * 8 + col) =
                            Mma<T>::pack(O[mi][dt][2 * h] * inv[mi][h], O[mi][dt][2 * h + 1] * inv[mi][h]);
                if (p.lse && (lane & 3) == 0) reinterpret_cast<float*>(p.lse)[row] = lse[mi][h];
            } else {
                const i64 prow = (i64)g.split * p.batch * p.hq * p.q_len + row;
                float* orow = reinterpret_cast<float*>(p.o_part) + prow * p.d;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    if (dt * 8 < p.d)
                        *reinterpret_cast<float2*>(orow + dt * 8 + col) =
                            make_float2(O[mi][dt][2 * h] * inv[mi][h], O[mi][dt][2 * h + 1] * inv[mi][h]);
                if ((lane & 3) == 0) reinterpret_cast<float*>(p.lse_part)[prow] = lse[mi][h];
            }
        }
}

// SPLIT: 0 no split code (n_splits must be 1); 1 splits merged through global memory
// (finish_splits); CL >= 2: exactly CL splits, one cluster, merged on chip (decode shapes,
// WN > 1, sm_90).
template <typename T, int D, int MI, int WM, int WN, int BNW, int STAGES, int SPLIT>
__device__ __forceinline__ void attn_fwd(const FwdParams& p) {
    typedef FwdCfg<D, MI, WM, WN, BNW, STAGES> C;
    constexpr int PD = STAGES - 1;                      // key tiles prefetched ahead
    constexpr int NT = C::NT, DT = C::DT, BM = C::BM, BN = C::BN;
    extern __shared__ __align__(128) unsigned char smem_raw[];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % WM, wn = warp / WM;
    const Geometry g = block_geometry<BM, BN>(p);
    const int G = g.G, R = g.R;

    // This thread's rows: (mi, h) -> packed row r = r0 + wm*16*MI + mi*16 + lane/4 + 8h.
    int lim[MI][2];
    row_limits<MI>(lim, p, g, g.r0 + wm * 16 * MI, lane);
    const HeadPtrs<unsigned short> hp = head_ptrs<unsigned short>(p, g);
    const unsigned short *kg = hp.k, *vg = hp.v;

    unsigned short* sQ = reinterpret_cast<unsigned short*>(smem_raw);
    const u32 sQa = smem_u32(sQ);
    const u32 sKa = sQa + C::Q_ELEMS * 2;
    const u32 sVa = sKa + STAGES * C::KV_ELEMS * 2;

    // ---- prologue: Q, then the first STAGES - 1 key tiles
    load_q_tile<BM, D, C::THREADS>(sQa, hp.q, p, g.r0, R, G);
    cp_async_commit();
#pragma unroll
    for (int s = 0; s < PD; ++s) {
        const int t = g.t_begin + s;
        if (t < g.t_end) {
            load_kv_tile<BN, D, C::THREADS>(sKa + s * C::KV_ELEMS * 2, kg, p.k_ss, t * BN, g.L, p.d);
            load_kv_tile<BN, D, C::THREADS>(sVa + s * C::KV_ELEMS * 2, vg, p.v_ss, t * BN, g.L, p.d);
        }
        cp_async_commit();
    }

    float O[MI][DT][4];
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int c = 0; c < 4; ++c) O[mi][dt][c] = 0.0f;
    RowState<MI> st;
    st.init();

    // Lane-constant parts of the ldmatrix addresses (all tiles start at rows % 8 == 0,
    // so the swizzle only depends on lane & 7).
    const int r7 = lane & 7;
    const u32 q_off = (u32)((wm * 16 * MI + (lane & 15)) * D * 2);
    const int xq = (lane >> 4) ^ r7;
    const u32 k_off = (u32)((wn * BNW + (lane & 7) + ((lane >> 4) << 3)) * D * 2);
    const int xk = ((lane >> 3) & 1) ^ r7;
    const u32 v_off = (u32)((wn * BNW + (lane & 7) + (((lane >> 3) & 1) << 3)) * D * 2);
    const int xv = (lane >> 4) ^ r7;
    const float sl2 = p.scale_log2;

    // step(u): tile u has landed (for every thread), and the tile PD ahead is in flight.
    auto step = [&](int u) {
        cp_async_wait<PD - 1>();
        __syncthreads();
        const int tn = u + PD;
        if (tn < g.t_end) {
            const int sn = (tn - g.t_begin) % STAGES;
            load_kv_tile<BN, D, C::THREADS>(sKa + sn * C::KV_ELEMS * 2, kg, p.k_ss, tn * BN, g.L, p.d);
            load_kv_tile<BN, D, C::THREADS>(sVa + sn * C::KV_ELEMS * 2, vg, p.v_ss, tn * BN, g.L, p.d);
        }
        cp_async_commit();
    };
    // S = Q K_t^T (raw scores), masked where a key lies past a row's limit
    auto scores = [&](float (&S)[MI][NT][4], int t) {
        const u32 kb = sKa + ((t - g.t_begin) % STAGES) * C::KV_ELEMS * 2 + k_off;
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int c = 0; c < 4; ++c) S[mi][nt][c] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < C::KD; ++kk) {
            u32 a[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi)
                ldsm_x4(a[mi], sQa + q_off + mi * 16 * D * 2 + (((2 * kk) ^ xq) << 4));
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 bb[4];
                ldsm_x4(bb, kb + np * 16 * D * 2 + (((2 * kk) ^ xk) << 4));
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    Mma<T>::run(S[mi][2 * np], a[mi], bb[0], bb[1]);
                    Mma<T>::run(S[mi][2 * np + 1], a[mi], bb[2], bb[3]);
                }
            }
        }
        if ((t + 1) * BN > g.mask_from) mask_tile<MI, NT>(S, lim, t * BN + wn * BNW + 2 * (lane & 3));
    };
    // online softmax of tile t, then O += P V_t
    auto softmax_pv = [&](float (&S)[MI][NT][4], int t) {
        if (t == g.t_begin) online_softmax_step<MI, NT, DT, true>(S, O, st, sl2);
        else online_softmax_step<MI, NT, DT, false>(S, O, st, sl2);
        const u32 vb = sVa + ((t - g.t_begin) % STAGES) * C::KV_ELEMS * 2 + v_off;
#pragma unroll
        for (int kk = 0; kk < C::KN; ++kk) {
            u32 a[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) pack_a<T>(a[mi], S[mi][2 * kk], S[mi][2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; ++dp) {
                u32 bb[4];
                ldsm_x4_t(bb, vb + kk * 16 * D * 2 + (((2 * dp) ^ xv) << 4));
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    Mma<T>::run(O[mi][2 * dp], a[mi], bb[0], bb[1]);
                    Mma<T>::run(O[mi][2 * dp + 1], a[mi], bb[2], bb[3]);
                }
            }
        }
    };

    float S[MI][NT][4];
    for (int t = g.t_begin; t < g.t_end; ++t) {
        step(t);
        scores(S, t);
        softmax_pv(S, t);
    }
    cp_async_wait<0>();

    constexpr bool ON_CHIP = SPLIT >= 2;
    static_assert(!ON_CHIP || WN > 1, "the on-chip finish keeps its partials beside the warps' merge");
    const bool split_out = SPLIT != 0 && (ON_CHIP || p.n_splits > 1);   // SPLIT 0: no split code
    if constexpr (WN == 1) {
        store_rows<T, MI, DT>(p, g, O, st, g.r0 + wm * 16 * MI, lane, split_out);
    } else {
        // ---- WN warps hold partial states of the same rows: merge them in shared memory
        __syncthreads();                                   // K/V buffers are free now
        constexpr int LD = C::RED_LD;
        float* red = reinterpret_cast<float*>(smem_raw + C::Q_ELEMS * 2);   // [WN][BM][LD]
        float* red_m = red + WN * BM * LD;                                  // [WN][BM]
        float* red_l = red_m + WN * BM;
        float* part_o = red_l + WN * BM;                                    // [BM][D]
        float* part_l = part_o + BM * D;                                    // [BM]
        // Each warp publishes its raw rows and their (m, l); the rescaling happens in the
        // merge below, so that one barrier separates the two.  Only the block's valid rows
        // are merged: a decode block often holds one query row of its 16.
        const int rows_here = imin(BM, R - g.r0);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float l = quad_sum(st.l[mi][h]);
                const int rl = wm * 16 * MI + mi * 16 + (lane >> 2) + 8 * h;
                if (rl >= rows_here) continue;
                if ((lane & 3) == 0) { red_m[wn * BM + rl] = st.m[mi][h]; red_l[wn * BM + rl] = l; }
                float* dst = red + (wn * BM + rl) * LD + 2 * (lane & 3);
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    *reinterpret_cast<float2*>(dst + dt * 8) = make_float2(O[mi][dt][2 * h], O[mi][dt][2 * h + 1]);
            }
        __syncthreads();
        for (int e = tid; e < rows_here * D / 2; e += C::THREADS) {
            const int rl = (2 * e) / D, col = (2 * e) % D;
            const int r = g.r0 + rl;
            if (col >= p.d) continue;
            float M = cs::neg_inf<float>();
#pragma unroll
            for (int w = 0; w < WN; ++w) M = fmaxf(M, red_m[w * BM + rl]);
            const float ms = shift_scaled(M, sl2);
            float l = 0.0f, o0 = 0.0f, o1 = 0.0f;
#pragma unroll
            for (int w = 0; w < WN; ++w) {
                const float f = rescale_factor(red_m[w * BM + rl], ms, sl2);
                const float2 v = *reinterpret_cast<const float2*>(red + (w * BM + rl) * LD + col);
                l += red_l[w * BM + rl] * f;
                o0 += v.x * f; o1 += v.y * f;
            }
            const bool empty = (l == 0.0f);
            const float inv = empty ? 0.0f : 1.0f / l;
            const float lse = empty ? cs::neg_inf<float>() : fmaf(cs::is_finite(M) ? M : 0.0f, (float)p.scale, logf(l));
            const int i = r / G, head = g.hk * G + (r - i * G);
            const i64 row = ((i64)g.b * p.hq + head) * p.q_len + i;
            if (!split_out) {
                T* orow = reinterpret_cast<T*>(p.o) + (i64)g.b * p.o_sb + (i64)head * p.o_sh + (i64)i * p.o_ss;
                *reinterpret_cast<u32*>(orow + col) = Mma<T>::pack(o0 * inv, o1 * inv);
                if (p.lse && col == 0) reinterpret_cast<float*>(p.lse)[row] = lse;
            } else if constexpr (ON_CHIP) {
                *reinterpret_cast<float2*>(part_o + rl * D + col) = make_float2(o0 * inv, o1 * inv);
                if (col == 0) part_l[rl] = lse;
            } else {
                const i64 prow = (i64)g.split * p.batch * p.hq * p.q_len + row;
                *reinterpret_cast<float2*>(reinterpret_cast<float*>(p.o_part) + prow * p.d + col) =
                    make_float2(o0 * inv, o1 * inv);
                if (col == 0) reinterpret_cast<float*>(p.lse_part)[prow] = lse;
            }
        }
        // blockIdx.z = b * CL + split is cluster rank `split` (cluster dims (1, 1, CL))
        if constexpr (ON_CHIP) finish_splits_on_chip<T, SPLIT, C::THREADS, D / 32>(p, part_o, part_l, D, g.split,
                                                                           g.r0, BM, R, G, g.hk, g.b);
    }
    if constexpr (!ON_CHIP)
        if (split_out) finish_splits<T, float, C::THREADS, D / 32>(p, g.r0, BM, R, G, g.hk, g.b);
}

// ------------------------------------------------------------------ SIMT kernel (float32 / float64)
// 128 threads, BQ = 16 packed rows, BK keys a tile; 8 threads own a row (the scores of
// keys (tid & 7) + 8u, then the output columns (tid & 7) + 8w).  Scores are scaled
// before the state update, which follows online_softmax.cuh's rules exactly.
template <typename A, int DP, int BK>
struct SimtCfg {
    static constexpr int THREADS = 128, BQ = 16;
    static constexpr int QS = DP + 1, KS = DP + 1, PS = BK + 1;   // padded row strides
    static constexpr int SMEM_BYTES = (BQ * QS + BK * KS + BK * DP + BQ * PS) * (int)sizeof(A);
};

template <typename A, int DP, int BK>
__device__ __forceinline__ void attn_simt(const FwdParams& p) {
    typedef SimtCfg<A, DP, BK> C;
    constexpr int BQ = C::BQ, NW = DP / 8, NU = BK / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    A* sQ = reinterpret_cast<A*>(smem_raw);
    A* sK = sQ + BQ * C::QS;
    A* sV = sK + BK * C::KS;
    A* sP = sV + BK * DP;

    const int tid = threadIdx.x;
    const Geometry g = block_geometry<BQ, BK>(p);
    const int G = g.G, R = g.R;
    const int rl = tid >> 3, sub = tid & 7;
    const int r = g.r0 + rl;
    const int ri = r / G;
    const int lim = p.causal ? imin(g.L, ri + g.off + 1) : g.L;
    const A scale = (A)p.scale;            // exact for float64

    const HeadPtrs<A> hp = head_ptrs<A>(p, g);
    const A *qg = hp.q, *kg = hp.k, *vg = hp.v;

    for (int e = tid; e < BQ * DP; e += C::THREADS) {
        const int rr = e / DP, c = e % DP, row = g.r0 + rr;
        A val = A(0);
        if (row < R && c < p.d) {
            const int i = row / G, gq = row - i * G;
            val = qg[(i64)gq * p.q_sh + (i64)i * p.q_ss + c];
        }
        sQ[rr * C::QS + c] = val;
    }

    A O[NW];
#pragma unroll
    for (int w = 0; w < NW; ++w) O[w] = A(0);
    cs::State<A> st = cs::empty_state<A>();

    for (int t = g.t_begin; t < g.t_end; ++t) {
        __syncthreads();                                   // previous tile fully used
        for (int e = tid; e < BK * DP; e += C::THREADS) {
            const int kr = e / DP, c = e % DP, j = t * BK + kr;
            const bool ok = j < g.L && c < p.d;
            sK[kr * C::KS + c] = ok ? kg[(i64)j * p.k_ss + c] : A(0);
            sV[kr * DP + c] = ok ? vg[(i64)j * p.v_ss + c] : A(0);
        }
        __syncthreads();
        A sc[NU];
        A tmax = cs::neg_inf<A>();
#pragma unroll
        for (int u = 0; u < NU; ++u) {
            const int kr = sub + 8 * u;
            A acc = A(0);
            for (int c = 0; c < DP; ++c) acc = fma(sQ[rl * C::QS + c], sK[kr * C::KS + c], acc);
            acc *= scale;
            if (t * BK + kr >= lim) acc = cs::neg_inf<A>();
            sc[u] = acc;
            tmax = cs::max_nf(tmax, acc);
        }
#pragma unroll
        for (int off = 4; off > 0; off >>= 1) tmax = cs::max_nf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
        const A m = cs::max_nf(st.m, tmax);
        const A sh = cs::shift(m);
        const A alpha = cs::rescale(st.m, m);
        A psum = A(0);
#pragma unroll
        for (int u = 0; u < NU; ++u) {
            const A e = cs::exp_acc(sc[u] - sh);
            sP[rl * C::PS + sub + 8 * u] = e;
            psum += e;
        }
#pragma unroll
        for (int off = 4; off > 0; off >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, off);
        st.s = cs::add_nf(cs::mul_nf(st.s, alpha), psum);
        st.m = m;
        __syncthreads();
#pragma unroll
        for (int w = 0; w < NW; ++w) O[w] *= alpha;
        for (int kr = 0; kr < BK; ++kr) {
            const A pv = sP[rl * C::PS + kr];
#pragma unroll
            for (int w = 0; w < NW; ++w) O[w] = fma(pv, sV[kr * DP + sub + 8 * w], O[w]);
        }
    }

    if (r < R) {
    const bool empty = cs::is_zero(st.s);
    const A inv = empty ? A(0) : A(1) / st.s;
    const A lse = empty ? cs::neg_inf<A>() : cs::shift(st.m) + cs::log_acc(st.s);
    const int head = g.hk * G + (r - ri * G);
    const i64 row = ((i64)g.b * p.hq + head) * p.q_len + ri;
    if (p.n_splits == 1) {
        A* orow = reinterpret_cast<A*>(p.o) + (i64)g.b * p.o_sb + (i64)head * p.o_sh + (i64)ri * p.o_ss;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            const int c = sub + 8 * w;
            if (c < p.d) orow[c] = O[w] * inv;
        }
        if (p.lse && sub == 0) reinterpret_cast<A*>(p.lse)[row] = lse;
    } else {
        const i64 prow = (i64)g.split * p.batch * p.hq * p.q_len + row;
        A* orow = reinterpret_cast<A*>(p.o_part) + prow * p.d;
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            const int c = sub + 8 * w;
            if (c < p.d) orow[c] = O[w] * inv;
        }
        if (sub == 0) reinterpret_cast<A*>(p.lse_part)[prow] = lse;
    }
    }
    if (p.n_splits > 1) finish_splits<A, A, C::THREADS, DP / 32>(p, g.r0, BQ, R, G, g.hk, g.b);
}

}  // namespace csattn

// ------------------------------------------------------------------ entry points
// One extern "C" kernel per instance; _attention.py writes the CS_ATTN_* lines.
#define CS_ATTN_PARAMS(TE)                                                                     \
    const TE* q, const TE* k, const TE* v, TE* o, void* lse, void* o_part, void* lse_part,   \
    const int* kv_lens, unsigned* counters,                                                    \
    long long q_sb, long long q_sh, long long q_ss, long long k_sb, long long k_sh, long long k_ss, \
    long long v_sb, long long v_sh, long long v_ss, long long o_sb, long long o_sh, long long o_ss, \
    int batch, int hq, int hkv, int q_len, int kv_len, int d, int causal, int n_splits,       \
    int tiles_per_split, int causal_chunks, double scale, float scale_log2

#define CS_ATTN_FILL(P)                                                                        \
    csattn::FwdParams P;                                                                       \
    P.q = q; P.k = k; P.v = v; P.o = o; P.lse = lse; P.o_part = o_part; P.lse_part = lse_part; \
    P.kv_lens = kv_lens; P.counters = counters;                                                \
    P.q_sb = q_sb; P.q_sh = q_sh; P.q_ss = q_ss; P.k_sb = k_sb; P.k_sh = k_sh; P.k_ss = k_ss;  \
    P.v_sb = v_sb; P.v_sh = v_sh; P.v_ss = v_ss; P.o_sb = o_sb; P.o_sh = o_sh; P.o_ss = o_ss;  \
    P.batch = batch; P.hq = hq; P.hkv = hkv; P.q_len = q_len; P.kv_len = kv_len; P.d = d;     \
    P.causal = causal; P.n_splits = n_splits; P.tiles_per_split = tiles_per_split;             \
    P.causal_chunks = causal_chunks;                                                           \
    P.scale = scale; P.scale_log2 = scale_log2;

// Tensor cores: T in cs::half_t, cs::bf16_t; dynamic shared memory FwdCfg<...>::SMEM_BYTES.
// SPLIT: 0 an instance without split code, 1 the split-KV capable one (any n_splits,
// merged through global memory), CL >= 2 n_splits = CL merged on chip; CLUSTER is then
// CS_ATTN_CLUSTER(CL) (empty otherwise).
#define CS_ATTN_CLUSTER(CL) CS_CLUSTER_DIMS(1, 1, CL)
#define CS_ATTN_FWD(NAME, T, D, MI, WM, WN, BNW, STAGES, MINB, SPLIT, CLUSTER)                 \
    extern "C" __global__ void __launch_bounds__(32 * (WM) * (WN), MINB) CLUSTER              \
    NAME(CS_ATTN_PARAMS(T)) {                                                                  \
        CS_ATTN_FILL(prm)                                                                      \
        csattn::attn_fwd<T, D, MI, WM, WN, BNW, STAGES, SPLIT>(prm);                           \
    }

// SIMT: A in float, double; 128 threads; dynamic shared memory SimtCfg<...>::SMEM_BYTES.
#define CS_ATTN_SIMT(NAME, A, DP, BK)                                                          \
    extern "C" __global__ void __launch_bounds__(128)                                          \
    NAME(CS_ATTN_PARAMS(A)) {                                                                  \
        CS_ATTN_FILL(prm)                                                                      \
        csattn::attn_simt<A, DP, BK>(prm);                                                     \
    }
