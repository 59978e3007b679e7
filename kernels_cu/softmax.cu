// softmax.cu -- the kernels of cupy_softmax, as templates over the element type and
// the tile shape.  cupy_softmax/_kernels.py appends one CS_* line per instance it
// needs (the table there is the list of instances) and compiles the result.
//
// Canonical input: x3 of shape (outer, n, inner), any element strides, reduced over n.
//   row_*  kernels: inner == 1; a group of tpr threads (a power of two <= 32, or the
//                   whole block) owns a row, or a chunk of one when rows are split.
//   col_*  kernels: inner > 1; a TX x TY block owns W = TX*VEC consecutive columns
//                   (coalesced along inner) and TY*R rows (softmax) or a row range (stats).
//   *_softmax  keep their chunk in registers or staged in shared memory (Chunk in the
//              header): read once, write once.  mode 0: the block holds the whole slice; mode 1: G
//              blocks split it and exchange partial states (row_softmax: a cluster of
//              XCH blocks, or global memory under a cooperative launch; col_softmax:
//              global memory); mode 2 (row_softmax): the state comes from st_m, st_s
//              (normalise against a given state).
//   col_normalize  columns against a given state (after col_stats, for columns too
//              long for col_softmax, and for the streaming API): elementwise.
//   *_stats    stream the input once and produce a state (out_kind 0: m, s at
//              [chunk][slice]) or the logsumexp and sign (out_kind 1).
//   merge_states  merges k stacked states (k, P) into P states or logsumexps.
#include "online_softmax.cuh"

namespace cs {

// ---------------------------------------------------------------- rows: work items
// tpr threads share a row: a power of two <= 32 (THREADS / tpr rows a block and item),
// or the whole block, whose item is then chunk c of G of a row.
struct RowItem {
    i64 row, c;
    bool active;                                   // row < rows
};
// tpr and rows a block are powers of two: shifts, not divisions (a 64-bit division is a
// call of ~100 instructions before the first load of a short-lived block).
struct RowTile {
    int tpr, lane, sub, rpb_log;
    bool block_row;
    i64 G, items;
    __device__ __forceinline__ RowTile(int threads, i64 tpr_, i64 rows, i64 G_) : G(G_) {
        tpr = (int)tpr_;
        block_row = (tpr == threads);
        const int tpr_log = __ffs(tpr) - 1;
        lane = (int)threadIdx.x & (tpr - 1);
        sub = (int)threadIdx.x >> tpr_log;
        rpb_log = (__ffs(threads) - 1) - tpr_log;
        items = block_row ? rows * G : (rows + (1 << rpb_log) - 1) >> rpb_log;
    }
    __device__ __forceinline__ RowItem at(i64 item, i64 rows) const {
        RowItem w;
        w.c = 0;
        if (!block_row) w.row = (item << rpb_log) + sub;
        else if (G == 1) w.row = item;
        else { w.row = item / G; w.c = item - w.row * G; }
        w.active = w.row < rows;
        return w;
    }
};

// ---------------------------------------------------------------- the sum pass of a chunk
// acc[k] += exp(a - sh[k]) over the VEC elements a of vector v of a chunk, k the element's
// column (PER_COLUMN) or 0 (one sum: a row).  keep_exp (float64 softmax): the exps replace
// the chunk's elements, for the write.
template <bool PER_COLUMN, typename T, int VEC, int THREADS, int NV, int HOLD, typename A>
__device__ __forceinline__ void add_exps(Chunk<T, VEC, THREADS, NV, HOLD>& stage, int v, const A* sh,
                                         A* acc, bool keep_exp) {
    A a[VEC];
    stage.get(v, a);
    if constexpr (KeepsExp<T>::value) {
        if (keep_exp) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const int k = PER_COLUMN ? e : 0;
                acc[k] = add_nf(acc[k], a[e] = OutExp<T>::f(a[e] - sh[k]));
            }
            stage.put(v, a);
            return;
        }
    }
    // The sum alone takes the fast exp: the max adds 1, next to which a term below
    // float32's normal range (which only exp_out keeps) adds nothing.
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        const int k = PER_COLUMN ? e : 0;
        acc[k] = add_nf(acc[k], exp_fast(a[e] - sh[k]));
    }
}

// ---------------------------------------------------------------- rows: softmax
// XCH: how the G blocks of a split row exchange partial states (mode 1): 0 never split,
// 1 through global memory (cooperative launch, any G), >= 2 a cluster of XCH blocks.
template <typename T, int VEC, int THREADS, int EPT, int XCH, int HOLD>
__device__ __forceinline__ void row_softmax(
    const T* __restrict__ x, i64 xs0, i64 xs1, T* __restrict__ out,
    i64 rows, i64 n, i64 tpr_, i64 G, i64 mode, i64 log_,
    typename AccOf<T>::type* st_m, typename AccOf<T>::type* st_s, unsigned* counters)
{
    typedef typename AccOf<T>::type A;
    static_assert(EPT % VEC == 0, "EPT is a whole number of vectors");
    constexpr int NV = EPT / VEC;
    __shared__ A red_m[THREADS / 32], red_s[THREADS / 32], bc[2];
    __shared__ State<A> pub[THREADS / 32];         // warp states for a cluster's exchange
    Chunk<T, VEC, THREADS, NV, HOLD> stage;        // the chunk: EPT elements per thread
    const bool keep_exp = KeepsExp<T>::value && !log_ && mode != 2;

    const int tid = threadIdx.x;
    const RowTile rt(THREADS, tpr_, rows, G);
    const int tpr = rt.tpr, lane = rt.lane;
    const i64 CH = (i64)tpr * EPT;

    for (i64 item = blockIdx.x; item < rt.items; item += gridDim.x) {
        const auto [row, c, active] = rt.at(item, rows);
        const T* xr = x + (active ? row : 0) * xs0;
        // Slots j count from the 16-byte boundary at or below the row's start, h of them
        // before it (its output row starts as far from a boundary: _cupy_backend._row_vec).
        const int h = head_slots<T, VEC>(xr);
        const i64 j0 = c * CH;

        // Thread `lane` holds vectors v * tpr + lane of the chunk (coalesced per v).
        // rem: slots of the row from this thread's first one on (clamped to the chunk: 32
        // bits); lo: the slots of its vector 0 before the row.
        i64 rem64 = active ? n + h - j0 - (i64)lane * VEC : 0;
        const int rem = (int)(rem64 < CH ? rem64 : CH);
        const int lo = j0 == 0 && lane == 0 ? h : 0;
        // Every vector of the warp's lanes whole (one path for the warp: rows of 1000
        // would run both where some lanes' last vector is partial).  Cluster rows only
        // (8-16 vectors a thread): block and split rows gained nothing, and f32 rows of
        // 8192 lost 4% to a spill (H200, session 23).
        const bool whole = XCH >= 2 && __all_sync(0xffffffffu, lo == 0 && rem - (NV - 1) * tpr * VEC >= VEC);
        if constexpr (VEC == 1) {                  // any element stride
            const T* p = xr + (j0 + lane) * xs1;
            const i64 step = (i64)tpr * xs1;
            const T ninf = raw_neg_inf<T>();
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                if (v * tpr < rem) stage.fetch(v, p + v * step);
                else stage.put(v, &ninf);
            }
        } else {                                   // contiguous rows
            const T* p = xr - h + j0 + (i64)lane * VEC;
            with_whole(whole, [&](auto w) {
#pragma unroll
                for (int v = 0; v < NV; ++v) {
                    const int off = v * tpr * VEC, first = v == 0 ? lo : 0;
                    if (decltype(w)::value || (rem - off >= VEC && first == 0)) {
                        stage.fetch(v, p + off);
                    } else {
                        T e[VEC];
#pragma unroll
                        for (int i = 0; i < VEC; ++i)
                            e[i] = i >= first && i < rem - off ? ldg(p + off + i) : raw_neg_inf<T>();
                        stage.put(v, e);
                    }
                }
            });
        }
        stage.wait();

        State<A> st;
        A m_chunk = A(0);                          // the shift of the kept exps
        if (mode == 2) {
            st.m = active ? st_m[row] : A(0);
            st.s = active ? st_s[row] : A(1);
        } else {
            A t[VEC];
            stage.column_max(t);
#pragma unroll
            for (int i = 1; i < VEC; ++i) t[0] = max_nf(t[0], t[i]);
            // A cluster's blocks exchange warp states (cluster_exchange_state).
            const int width = XCH >= 2 && mode == 1 ? 32 : tpr;
            st.m = group_allreduce<THREADS, MaxOp>(t[0], width, red_m);
            m_chunk = st.m;
            const A sh = shift(st.m);
            A sum = A(0);
#pragma unroll
            for (int v = 0; v < NV; ++v) add_exps<false>(stage, v, &sh, &sum, keep_exp);
            st.s = group_allreduce<THREADS, SumOp>(sum, width, red_s);
            if (XCH == 1 && mode == 1) {           // block_row; item == row * G + c
                if (tid == 0) { st_m[item] = st.m; st_s[item] = st.s; }
                group_arrive_and_wait(counters + 2 * row, G);
                if (tid < 32) {
                    const State<A> g = warp_merge_published(st_m, st_s, row * G, 1, G, 32);
                    if (tid == 0) { bc[0] = g.m; bc[1] = g.s; }
                }
                __syncthreads();
                group_depart(counters + 2 * row, G);
                st.m = bc[0];
                st.s = bc[1];
            }
            if constexpr (XCH >= 2) {              // G == XCH blocks of a cluster; c == rank
                if (mode == 1) st = cluster_exchange_state<THREADS, XCH>(st, pub);
            }
        }

        const A sh = shift(st.m);
        const A ls = log_ ? log_acc(st.s) : A(0);
        const A inv = log_ ? A(0) : softmax_inv(st);
        // exp(x - m) = exp(x - m_chunk) * exp(m_chunk - m): one scale for the kept exps.
        const A scale = keep_exp ? mul_nf(rescale(m_chunk, st.m), inv) : inv;
        // output rows are contiguous
        T* po = out + (active ? row : 0) * n - h + j0 + (i64)lane * VEC;
        with_whole(whole, [&](auto w) {
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                A o[VEC];
                stage.get(v, o);
#pragma unroll
                for (int i = 0; i < VEC; ++i)
                    o[i] = log_ ? (o[i] - sh) - ls : mul_nf(keep_exp ? o[i] : OutExp<T>::f(o[i] - sh), scale);
                const int off = v * tpr * VEC, first = v == 0 ? lo : 0;
                if (decltype(w)::value || (VEC > 1 && rem - off >= VEC && first == 0)) {
                    store_vec<T, VEC>(po + off, o);
                } else {
#pragma unroll
                    for (int i = 0; i < VEC; ++i)
                        if (i >= first && i < rem - off) po[off + i] = Conv<T>::from(o[i]);
                }
            }
        });
        if constexpr (XCH >= 2) {
            if (mode == 1) cluster_wait();         // peers have read this block's state
        }
    }
}

// ---------------------------------------------------------------- rows: state / logsumexp
// EPP: elements each thread has in flight per pass (the instances' choice, _kernels.py
// stats_epps), EPP / VEC vectors (or scalars).

// Write a finished state: (m, s) for out_kind 0, logsumexp (and sign) for out_kind 1.
template <typename T, typename A>
__device__ __forceinline__ void write_state(State<A> st, i64 p, i64 out_kind, A* om, A* os,
                                            T* ov, T* osign) {
    if (out_kind == 0) {
        om[p] = st.m;
        os[p] = st.s;
    } else {
        A l = lse_of(st);
        if (osign) osign[p] = Conv<T>::from(sign_of(st.s));
        else if (negative(st.s)) l = qnan<A>();
        ov[p] = Conv<T>::from(l);
    }
}

// Entries p = begin, begin + 1, ... (< end) of a (G, P) array of published states, THREADS /
// width of them at a time (then on by step): each merged by `width` lanes and written
// (out_kind as write_state).  Out of line, one short loop: the last block of a group runs
// it once, at the end of the launch, with its instructions fetched cold; col_stats' merge
// of a strip, unrolled over its VEC columns in every block, took ~6 us there
// (bench/NOTES.md, session 25).
template <typename T, int THREADS, typename A>
__device__ __noinline__ void merge_published_entries(const A* m, const A* s, i64 G, i64 P,
                                                    i64 begin, i64 end, i64 step, int width,
                                                    i64 out_kind, A* om, A* os, T* ov, T* osign) {
    for (i64 base = begin; base < end; base += step) {   // the same trips in every lane
        const i64 p = base + (int)threadIdx.x / width;
        const State<A> g = warp_merge_published(m, s, p, P, p < end ? G : 0, width);
        if (((int)threadIdx.x & (width - 1)) == 0 && p < end)
            write_state<T, A>(g, p, out_kind, om, os, ov, osign);
    }
}

// G > 1: each block states a chunk of CH elements into wm/ws[c * rows + row]; the last
// block of a row merges the G states (counter cnt[row]).
template <typename T, int VEC, int THREADS, bool HAS_B, int EPP>
__device__ __forceinline__ void row_stats(
    const T* __restrict__ x, i64 xs0, i64 xs1, const T* __restrict__ b, i64 bs0, i64 bs1,
    i64 rows, i64 n, i64 tpr_, i64 G, i64 CH, i64 out_kind,
    typename AccOf<T>::type* om, typename AccOf<T>::type* os, T* ov, T* osign,
    typename AccOf<T>::type* wm, typename AccOf<T>::type* ws, unsigned* cnt)
{
    typedef typename AccOf<T>::type A;
    constexpr int U = EPP / VEC;
    __shared__ A red_m[THREADS / 32], red_s[THREADS / 32];
    __shared__ int last_flag;

    const int tid = threadIdx.x;
    const RowTile rt(THREADS, tpr_, rows, G);
    const int tpr = rt.tpr, lane = rt.lane;
    const i64 step = (i64)tpr * VEC;

    for (i64 item = blockIdx.x; item < rt.items; item += gridDim.x) {
        const auto [row, c, active] = rt.at(item, rows);
        // Slots j from the 16-byte boundary at or below the row's start, h before it
        // (row_softmax's way); the weights are read at the element's own index j - h.
        const T* xr = x + (active ? row : 0) * xs0;
        const int h = head_slots<T, VEC>(xr);
        const T* xv = xr - h;
        const T* br = HAS_B ? b + (active ? row : 0) * bs0 : b;
        const i64 jb = c * CH;
        const i64 je = active ? (n + h < jb + CH ? n + h : jb + CH) : jb;

        State<A> st = empty_state<A>();
        for (i64 base = jb + (i64)lane * VEC; base < je; base += step * U) {
            RawTile<T, U * VEC> a;                 // raw elements (16-bit ones stay packed)
            A w[HAS_B ? U * VEC : 1];
            // (the lanes still in the loop vote: one path for the warp)
            with_whole(__all_sync(__activemask(), VEC > 1 && base >= h && base + (U - 1) * step + VEC <= je),
                       [&](auto whole) {
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    const i64 j = base + u * step;
                    if (decltype(whole)::value || (VEC > 1 && j >= h && j + VEC <= je)) {
                        a.load16(u * VEC, xv + j);
                    } else {
#pragma unroll
                        for (int e = 0; e < VEC; ++e)
                            a.set(u * VEC + e, j + e >= h && j + e < je ? ldg(xv + (j + e) * xs1) : raw_neg_inf<T>());
                    }
                    if constexpr (HAS_B) {
#pragma unroll
                        for (int e = 0; e < VEC; ++e)
                            w[u * VEC + e] = decltype(whole)::value || (j + e >= h && j + e < je)
                                ? load_acc(br + (j + e - h) * bs1) : A(0);
                    }
                }
            });
            fold_tile<A, U * VEC, HAS_B>(st, a, 0, w);
        }
        st = group_allreduce_state<THREADS>(st, tpr, red_m, red_s);

        if (G == 1) {
            if (lane == 0 && active) write_state<T, A>(st, row, out_kind, om, os, ov, osign);
            continue;
        }
        // split rows (block_row): publish, and let the last block of the row merge
        if (tid == 0) { wm[c * rows + row] = st.m; ws[c * rows + row] = st.s; }
        if (group_arrive_last(cnt + row, G, &last_flag) && tid < 32) {
            const State<A> g = warp_merge_published(wm, ws, row, rows, G, 32);
            if (tid == 0) write_state<T, A>(g, row, out_kind, om, os, ov, osign);
        }
    }
}

// ---------------------------------------------------------------- columns: softmax
// The chunk (R rows of VEC columns per thread) is staged in shared memory like a row
// chunk; mode 1 splits the slice over G blocks that exchange through global memory
// (cooperative launch).
// ---------------------------------------------------------------- columns: shared pieces
// A TX x TY block (tid = ty * TX + tx, TX = 2^txlog) owns a strip: W = TX * VEC
// consecutive columns of one slice o (coalesced along inner); thread tx holds VEC of
// them, from column i.  Group grp = o * strips + strip.
// Work item `item` of a launch with G items per group: group grp, its chunk c, slice o,
// and i, the first of this thread's columns.
struct ColItem { i64 grp, c, o, i; };
struct ColTile {
    int tx, ty, TX, TY, vec;
    i64 W, strips;
    __device__ __forceinline__ ColTile(int threads, i64 txlog, int vec_, i64 inner) : vec(vec_) {
        TX = 1 << (int)txlog;
        TY = threads >> (int)txlog;
        tx = (int)threadIdx.x & (TX - 1);
        ty = (int)threadIdx.x >> (int)txlog;
        W = (i64)TX * vec;
        strips = (inner + W - 1) / W;
    }
    __device__ __forceinline__ ColItem at(i64 item, i64 G) const {
        ColItem w;
        w.grp = item / G;
        w.c = item - w.grp * G;
        w.o = w.grp / strips;
        w.i = (w.grp - w.o * strips) * W + (i64)tx * vec;
        return w;
    }
};

// Vector r of the chunk <- row j0 + ty + r * TY (r < R) of this thread's VEC columns
// (from column i, at xo + j * xs1); rows from je on and columns past inner read as -inf.
template <typename T, int VEC, int THREADS, int R, int HOLD>
__device__ __forceinline__ void col_fetch(Chunk<T, VEC, THREADS, R, HOLD>& stage, const T* xo,
                                          i64 xs1, i64 je, i64 inner, i64 i, i64 j0,
                                          const ColTile& t) {
    const i64 rows = je - (j0 + t.ty);            // this thread's rows, from its first on
    const T* p = xo + (j0 + t.ty) * xs1;
    const i64 step = (i64)t.TY * xs1;
#pragma unroll
    for (int r = 0; r < R; ++r, p += step) {
        if ((i64)r * t.TY < rows && i < inner) {
            stage.fetch(r, p);
        } else {                                   // past the rows, or past inner (VEC > 1:
            T e[VEC];                              // inner % VEC == 0, so all VEC are)
#pragma unroll
            for (int k = 0; k < VEC; ++k) e[k] = raw_neg_inf<T>();
            stage.put(r, e);
        }
    }
    stage.wait();
}

// What normalising a column against its state needs: the shift, and log(s) for
// log_softmax or 1/s for softmax.  m_kept: the chunk holds exp(x - m_kept) (softmax
// only), which k then scales by exp(m_kept - m).
template <typename A, int VEC> struct ColNorm {
    A sh[VEC], k[VEC];
    bool kept;
    __device__ __forceinline__ ColNorm() {}
    __device__ __forceinline__ ColNorm(const State<A>* st, i64 log_, const A* m_kept = nullptr)
        : kept(m_kept != nullptr) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            sh[e] = shift(st[e].m);
            k[e] = log_ ? log_acc(st[e].s) : softmax_inv(st[e]);
            if (kept) k[e] = mul_nf(rescale(m_kept[e], st[e].m), k[e]);
        }
    }
};

// Rows j0 + ty + r * TY (< je) of this thread's columns, normalised (softmax, or
// log_softmax when log_), into outo + j * inner + column.
template <typename T, int VEC, int THREADS, int R, int HOLD, typename A>
__device__ __forceinline__ void col_write(const Chunk<T, VEC, THREADS, R, HOLD>& stage,
                                          const ColNorm<A, VEC>& nm, i64 log_, T* outo, i64 je,
                                          i64 inner, i64 i, i64 j0, const ColTile& t) {
    const i64 rows = je - (j0 + t.ty);            // this thread's rows, from its first on
    T* p = outo + (j0 + t.ty) * inner + i;
    const i64 step = (i64)t.TY * inner;
#pragma unroll
    for (int r = 0; r < R; ++r, p += step) {
        const bool row = (i64)r * t.TY < rows;
        A ov[VEC];
        stage.get(r, ov);
#pragma unroll
        for (int e = 0; e < VEC; ++e)
            ov[e] = log_ ? (ov[e] - nm.sh[e]) - nm.k[e]
                         : mul_nf(nm.kept ? ov[e] : OutExp<T>::f(ov[e] - nm.sh[e]), nm.k[e]);
        if (VEC > 1 && row && i < inner) {
            store_vec<T, VEC>(p, ov);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                if (row && i + e < inner) p[e] = Conv<T>::from(ov[e]);
        }
    }
}

// The states of this thread's VEC columns over rows [jb, je), streamed (weights b when
// HAS_B) and reduced over the block: every thread of column tx gets them.
template <typename T, int VEC, int THREADS, bool HAS_B, int EPP, typename A>
__device__ __forceinline__ void col_chunk_states(State<A>* st, const T* xo, i64 xs1, i64 xs2,
                                                 const T* bo, i64 bs1, i64 bs2, i64 inner, i64 i,
                                                 i64 jb, i64 je, const ColTile& t, A* rm) {
    constexpr int U = EPP / VEC;                    // rows in flight per thread
#pragma unroll
    for (int e = 0; e < VEC; ++e) st[e] = empty_state<A>();
    const i64 step = (i64)t.TY * xs1;
    for (i64 j = jb + t.ty; j < je; j += (i64)t.TY * U) {
        RawTile<T, U * VEC> a;                     // [row u][column e], raw
        A w[HAS_B ? U * VEC : 1];
        const int rows = je - j < (i64)U * t.TY ? (int)(je - j) : U * t.TY;   // in range
        const T* p = xo + j * xs1;
        if (VEC > 1 && !HAS_B && rows == U * t.TY && i < inner) {   // the common, full pass
#pragma unroll
            for (int u = 0; u < U; ++u) a.load16(u * VEC, p + u * step);
        } else {
#pragma unroll
            for (int u = 0; u < U; ++u, p += step) {
                const bool row = u * t.TY < rows;
                if (VEC > 1 && row && i < inner) {
                    a.load16(u * VEC, p);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e)
                        a.set(u * VEC + e, (row && i + e < inner) ? ldg(p + e * xs2) : raw_neg_inf<T>());
                }
                if constexpr (HAS_B) {
                    const T* q = bo + (j + (i64)u * t.TY) * bs1;
#pragma unroll
                    for (int e = 0; e < VEC; ++e)
                        w[u * VEC + e] = (row && i + e < inner) ? load_acc(q + e * bs2) : A(0);
                }
            }
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) fold_tile<A, U, HAS_B, VEC>(st[e], a, e, w + (HAS_B ? e : 0));
    }
    column_allreduce_state<THREADS, VEC>(st, rm, t.TX);
}

// ---------------------------------------------------------------- columns: softmax in one pass
// Slices of n that G blocks hold on chip together: each block stages TY * R rows of its
// strip.  XCH 0: G > 1 blocks (a cooperative launch) exchange their states through
// global memory (mode 1); XCH >= 2: G == XCH blocks of a cluster exchange them through
// distributed shared memory.  Longer slices: col_stats, then col_normalize.
template <typename T, int VEC, int THREADS, int R, int XCH>
__device__ __forceinline__ void col_softmax(
    const T* __restrict__ x, i64 xs0, i64 xs1, i64 xs2, T* __restrict__ out,
    i64 outer, i64 n, i64 inner, i64 txlog, i64 G, i64 log_,
    typename AccOf<T>::type* st_m, typename AccOf<T>::type* st_s, unsigned* counters)
{
    typedef typename AccOf<T>::type A;
    __shared__ A rm[VEC * THREADS];
    __shared__ State<A> pub[XCH >= 2 ? 32 * VEC : 1];   // this block's column states (TX <= 32)
    Chunk<T, VEC, THREADS, R, STAGED> stage;       // vector r: row r of the thread's columns
    const ColTile t(THREADS, txlog, VEC, inner);
    const i64 groups = outer * t.strips;
    const i64 H = (i64)t.TY * R;
    const i64 items = groups * G;
    const bool keep_exp = KeepsExp<T>::value && !log_;

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const auto [grp, c, o, i] = t.at(item, G);
        col_fetch(stage, x + o * xs0 + i * xs2, xs1, n, inner, i, c * H, t);

        State<A> st[VEC];
        A v[VEC], sh[VEC], m_chunk[VEC];
        stage.column_max(v);
        column_allreduce<THREADS, VEC, MaxOp>(v, rm, t.TX);
#pragma unroll
        for (int e = 0; e < VEC; ++e) { st[e].m = m_chunk[e] = v[e]; sh[e] = shift(v[e]); v[e] = A(0); }
        // 64 exps in flight: 16-bit rows of 8 columns, unrolled in full, spill at the 80
        // registers that give 3 blocks an SM.
#pragma unroll (64 / VEC)
        for (int r = 0; r < R; ++r) add_exps<true>(stage, r, sh, v, keep_exp);
        column_allreduce<THREADS, VEC, SumOp>(v, rm, t.TX);
#pragma unroll
        for (int e = 0; e < VEC; ++e) st[e].s = v[e];
        if constexpr (XCH >= 2) {                  // c == rank in the cluster
            column_exchange_cluster<THREADS, VEC, XCH>(st, pub, rm, t.tx, t.ty);
        } else if (G > 1) {                        // item == grp * G + c
            if (t.ty == 0) {
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    st_m[item * t.W + t.tx * VEC + e] = st[e].m;
                    st_s[item * t.W + t.tx * VEC + e] = st[e].s;
                }
            }
            group_arrive_and_wait(counters + 2 * grp, G);
#pragma unroll
            for (int e = 0; e < VEC; ++e) st[e] = empty_state<A>();
            for (i64 q = t.ty; q < G; q += t.TY) {
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                    st[e] = merge(st[e], load_published(st_m, st_s, (grp * G + q) * t.W + t.tx * VEC + e));
            }
            column_allreduce_state<THREADS, VEC>(st, rm, t.TX);
            group_depart(counters + 2 * grp, G);
        }
        col_write(stage, ColNorm<A, VEC>(st, log_, keep_exp ? m_chunk : nullptr), log_,
                  out + o * n * inner, n, inner, i, c * H, t);
        if constexpr (XCH >= 2) cluster_wait();     // peers have read this block's states
    }
}

// ---------------------------------------------------------------- columns: normalise
// Against given states (the last pass of the state-then-normalise route, and the
// streaming API): elementwise, R vectors a thread in registers, items of TY * R rows
// of a strip; few registers, so that many blocks keep the memory busy.
template <typename T, int VEC, int THREADS, int R>
__device__ __forceinline__ void col_normalize(
    const T* __restrict__ x, i64 xs0, i64 xs1, i64 xs2, T* __restrict__ out,
    i64 outer, i64 n, i64 inner, i64 txlog, i64 log_,
    const typename AccOf<T>::type* st_m, const typename AccOf<T>::type* st_s)
{
    typedef typename AccOf<T>::type A;
    Chunk<T, VEC, THREADS, R, IN_REGISTERS> stage;
    const ColTile t(THREADS, txlog, VEC, inner);
    const i64 H = (i64)t.TY * R;
    const i64 G = (n + H - 1) / H;
    const i64 items = outer * t.strips * G;

    ColNorm<A, VEC> nm;
    i64 nm_grp = -1;                               // the group whose columns nm holds
    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const auto [grp, c, o, i] = t.at(item, G);
        col_fetch(stage, x + o * xs0 + i * xs2, xs1, n, inner, i, c * H, t);
        if (grp != nm_grp) {                       // (a block's items share a group where G
            State<A> st[VEC];                      // exceeds the grid)
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const bool ok = i + e < inner;
                st[e].m = ok ? st_m[o * inner + i + e] : A(0);
                st[e].s = ok ? st_s[o * inner + i + e] : A(1);
            }
            nm = ColNorm<A, VEC>(st, log_);
            nm_grp = grp;
        }
        col_write(stage, nm, log_, out + o * n * inner, n, inner, i, c * H, t);
    }
}

// ---------------------------------------------------------------- columns: state / logsumexp
// G > 1: the slice's rows, in units of CH (a pass of the block where n is long enough),
// are dealt to G chunks that differ by at most a unit; each block states chunk c of its W
// columns into wm/ws[c * P + column]; the last block of the column strip merges (counter
// cnt[grp]).  Whole passes: a partial one costs more than a full one (a predicated scalar
// load an element; session 26).
template <typename T, int VEC, int THREADS, bool HAS_B, int EPP>
__device__ __forceinline__ void col_stats(
    const T* __restrict__ x, i64 xs0, i64 xs1, i64 xs2,
    const T* __restrict__ b, i64 bs0, i64 bs1, i64 bs2,
    i64 outer, i64 n, i64 inner, i64 txlog, i64 G, i64 CH, i64 out_kind,
    typename AccOf<T>::type* om, typename AccOf<T>::type* os, T* ov, T* osign,
    typename AccOf<T>::type* wm, typename AccOf<T>::type* ws, unsigned* cnt)
{
    typedef typename AccOf<T>::type A;
    __shared__ A rm[VEC * THREADS];
    __shared__ int last_flag;
    const ColTile t(THREADS, txlog, VEC, inner);
    const i64 groups = outer * t.strips;
    const i64 items = groups * G;
    const i64 P = outer * inner;

    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        const auto [grp, c, o, i] = t.at(item, G);
        const T* xo = x + o * xs0 + i * xs2;
        const T* bo = HAS_B ? b + o * bs0 + i * bs2 : b;
        i64 jb = 0, je = n;
        if (G > 1) {                               // no 64-bit division for a whole slice
            const i64 units = (n + CH - 1) / CH;
            const i64 ub = c * units / G * CH, ue = (c + 1) * units / G * CH;
            jb = n < ub ? n : ub;
            je = n < ue ? n : ue;
        }

        State<A> st[VEC];
        col_chunk_states<T, VEC, THREADS, HAS_B, EPP>(st, xo, xs1, xs2, bo, bs1, bs2, inner, i, jb, je, t, rm);
        if (t.ty == 0) {                           // G == 1: the states; else chunk c's, published
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                if (i + e >= inner) continue;
                if (G == 1) {
                    write_state<T, A>(st[e], o * inner + i + e, out_kind, om, os, ov, osign);
                } else {
                    wm[c * P + o * inner + i + e] = st[e].m;
                    ws[c * P + o * inner + i + e] = st[e].s;
                }
            }
        }
        if (G > 1 && group_arrive_last(cnt + grp, G, &last_flag)) {
            // the last block of the strip merges each of its columns' G states
            const i64 i0 = i - (i64)t.tx * VEC;    // the strip's first column
            const i64 cols = inner - i0 < t.W ? inner - i0 : t.W;
            int width = 32;                        // lanes a column: all the block's threads
            while (width > 1 && (i64)width * cols > THREADS) width >>= 1;
            merge_published_entries<T, THREADS>(wm, ws, G, P, o * inner + i0, o * inner + i0 + cols,
                                                THREADS / width, width,
                                                out_kind, om, os, ov, osign);
        }
    }
}

// ---------------------------------------------------------------- merge of stacked states
// (k, P) states -> P states (out_kind 0) or logsumexp/sign in TO (out_kind 1).
// Groups of L = 2^lanes_log lanes share an entry (L = 32 for large k).
template <typename TO, int THREADS>
__device__ __forceinline__ void merge_states(
    const typename AccOf<TO>::type* __restrict__ mp, const typename AccOf<TO>::type* __restrict__ sp,
    i64 k, i64 P, i64 lanes_log, i64 out_kind,
    typename AccOf<TO>::type* om, typename AccOf<TO>::type* os, TO* ov, TO* osign)
{
    const int L = 1 << (int)lanes_log;
    const i64 per_block = THREADS / L;
    merge_published_entries<TO, THREADS>(mp, sp, k, P, blockIdx.x * per_block, P,
                                         (i64)gridDim.x * per_block, L, out_kind, om, os, ov, osign);
}

}  // namespace cs

// ---------------------------------------------------------------- entry points
// One extern "C" kernel per template instance; _kernels.py writes the list.
#define CS_ACC(T) cs::AccOf<T>::type

#define CS_CLUSTER(G) CS_CLUSTER_DIMS(G, 1, 1)

// XCH >= 2: the kernel is launched in clusters of XCH blocks (CLUSTER is CS_CLUSTER(XCH)
// then, empty otherwise).
#define CS_ROW_SOFTMAX(NAME, T, VEC, THREADS, EPT, XCH, HOLD, MINB, CLUSTER)                \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB) CLUSTER NAME(               \
        const T* x, cs::i64 xs0, cs::i64 xs1, T* out, cs::i64 rows, cs::i64 n,              \
        cs::i64 tpr, cs::i64 G, cs::i64 mode, cs::i64 log_, CS_ACC(T)* sm, CS_ACC(T)* ss,   \
        unsigned* cnt) {                                                                    \
        cs::row_softmax<T, VEC, THREADS, EPT, XCH, HOLD>(x, xs0, xs1, out, rows, n, tpr,    \
                                                         G, mode, log_, sm, ss, cnt);       \
    }

#define CS_ROW_STATS(NAME, T, VEC, THREADS, HAS_B, EPP, MINB)                               \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB) NAME(                       \
        const T* x, cs::i64 xs0, cs::i64 xs1, const T* b, cs::i64 bs0, cs::i64 bs1,         \
        cs::i64 rows, cs::i64 n, cs::i64 tpr, cs::i64 G, cs::i64 CH, cs::i64 out_kind,      \
        CS_ACC(T)* om, CS_ACC(T)* os, T* ov, T* osign, CS_ACC(T)* wm, CS_ACC(T)* ws,        \
        unsigned* cnt) {                                                                    \
        cs::row_stats<T, VEC, THREADS, HAS_B, EPP>(x, xs0, xs1, b, bs0, bs1, rows, n, tpr,  \
                                                   G, CH, out_kind, om, os, ov, osign, wm, ws, \
                                                   cnt);                                    \
    }

#define CS_COL_SOFTMAX(NAME, T, VEC, THREADS, R, XCH, MINB, CLUSTER)                       \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB) CLUSTER NAME(               \
        const T* x, cs::i64 xs0, cs::i64 xs1, cs::i64 xs2, T* out, cs::i64 outer,           \
        cs::i64 n, cs::i64 inner, cs::i64 txlog, cs::i64 G, cs::i64 log_, CS_ACC(T)* sm,    \
        CS_ACC(T)* ss, unsigned* cnt) {                                                     \
        cs::col_softmax<T, VEC, THREADS, R, XCH>(x, xs0, xs1, xs2, out, outer, n, inner,    \
                                                 txlog, G, log_, sm, ss, cnt);              \
    }

#define CS_COL_NORMALIZE(NAME, T, VEC, THREADS, R, MINB)                                    \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB) NAME(                       \
        const T* x, cs::i64 xs0, cs::i64 xs1, cs::i64 xs2, T* out, cs::i64 outer,           \
        cs::i64 n, cs::i64 inner, cs::i64 txlog, cs::i64 log_, const CS_ACC(T)* sm,         \
        const CS_ACC(T)* ss) {                                                              \
        cs::col_normalize<T, VEC, THREADS, R>(x, xs0, xs1, xs2, out, outer, n, inner,       \
                                              txlog, log_, sm, ss);                         \
    }

#define CS_COL_STATS(NAME, T, VEC, THREADS, HAS_B, EPP, MINB)                               \
    extern "C" __global__ void __launch_bounds__(THREADS, MINB) NAME(                       \
        const T* x, cs::i64 xs0, cs::i64 xs1, cs::i64 xs2, const T* b, cs::i64 bs0,         \
        cs::i64 bs1, cs::i64 bs2, cs::i64 outer, cs::i64 n, cs::i64 inner, cs::i64 txlog,   \
        cs::i64 G, cs::i64 CH, cs::i64 out_kind, CS_ACC(T)* om, CS_ACC(T)* os, T* ov,        \
        T* osign, CS_ACC(T)* wm, CS_ACC(T)* ws, unsigned* cnt) {                            \
        cs::col_stats<T, VEC, THREADS, HAS_B, EPP>(x, xs0, xs1, xs2, b, bs0, bs1, bs2,      \
                                                   outer, n, inner, txlog, G, CH, out_kind, \
                                                   om, os, ov, osign, wm, ws, cnt);         \
    }

#define CS_MERGE_STATES(NAME, T, THREADS)                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS) NAME(                             \
        const CS_ACC(T)* mp, const CS_ACC(T)* sp, cs::i64 k, cs::i64 P, cs::i64 lanes_log,  \
        cs::i64 out_kind, CS_ACC(T)* om, CS_ACC(T)* os, T* ov, T* osign) {                  \
        cs::merge_states<T, THREADS>(mp, sp, k, P, lanes_log, out_kind, om, os, ov, osign); \
    }
