// online_softmax.cuh -- the one CUDA header of cupy_softmax.
//
// The (m, s) state algebra of cupy_softmax/_state.py, written once for the GPU:
//
//     m = max{a_i : b_i != 0}            (-inf when empty)
//     s = sum b_i exp(a_i - shift(m))    shift(m) = m if finite, else 0
//     merge:   m = max(m1, m2), s = s1 rescale(m1, m) + s2 rescale(m2, m)
//     rescale(mi, m) = exp(mi - m) if m finite, else exp(shift(mi))
//     logsumexp = shift(m) + log|s|, sign = sign(s)
//     softmax   = exp(x - shift(m)) * inv,  inv = 1/s if m finite, else NaN
//     log_softmax = (x - shift(m)) - log(s)
//
// Every +-inf / NaN rule of the library falls out of these formulas (see _state.py).
// The max here ignores NaN (like fmaxf); a NaN element still makes s NaN, and every
// finaliser then returns NaN, so results agree with the NumPy path.
//
// CuPy compiles with -ftz=true.  So that subnormal weights, sums and float32 outputs
// are not flushed, the float arithmetic on s and on float32 outputs goes through the
// *_nf helpers below (PTX instructions without .ftz), zero tests look at bits, and
// exp_acc and exp_out are exps that keep subnormal results.
//
// Also here: element types (float16/bfloat16 as raw bits, converted with PTX), 16-byte
// vector loads/stores, a thread's chunk in registers or staged in shared memory (cp.async),
// warp/block reductions of values and of states, and the exchange of states between
// the blocks of a split slice (through global memory, or a thread-block cluster's
// distributed shared memory on sm_90).
#pragma once

namespace cs {

typedef long long i64;

// ------------------------------------------------------------------ element types
struct half_t { unsigned short bits; };   // IEEE binary16
struct bf16_t { unsigned short bits; };   // bfloat16

template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(half_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
}
__device__ __forceinline__ float to_acc(bf16_t v) {
    return __uint_as_float(((unsigned)v.bits) << 16);
}

template <typename T> struct Conv;
template <> struct Conv<float> {
    static __device__ __forceinline__ float from(float v) { return v; }
};
template <> struct Conv<double> {
    static __device__ __forceinline__ double from(double v) { return v; }
};
template <> struct Conv<half_t> {
    static __device__ __forceinline__ half_t from(float v) {
        half_t h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
        return h;
    }
};
template <> struct Conv<bf16_t> {
    static __device__ __forceinline__ bf16_t from(float v) {
        bf16_t h;
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));   // sm_80+
        return h;
    }
};

// ------------------------------------------------------------------ loads and stores
__device__ __forceinline__ float ldg(const float* p) { return __ldg(p); }
__device__ __forceinline__ double ldg(const double* p) { return __ldg(p); }
__device__ __forceinline__ half_t ldg(const half_t* p) {
    half_t h; h.bits = __ldg(reinterpret_cast<const unsigned short*>(p)); return h;
}
__device__ __forceinline__ bf16_t ldg(const bf16_t* p) {
    bf16_t h; h.bits = __ldg(reinterpret_cast<const unsigned short*>(p)); return h;
}

template <typename T> __device__ __forceinline__ typename AccOf<T>::type load_acc(const T* p) {
    return to_acc(ldg(p));
}

// 16 bytes to global memory as one vector store.  A uint4 assigned through a pointer
// reaches PTX as 4 to 8 element stores once its union is split into elements (4 to 8
// L2 write requests for 16 bytes: ncu showed the L2, not DRAM, as the limit of the
// long-row softmax), so the store is spelled out.
__device__ __forceinline__ void st_global16(void* p, uint4 u) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};"
                 :: "l"(p), "r"(u.x), "r"(u.y), "r"(u.z), "r"(u.w) : "memory");
}

// VEC elements of T in 16 bytes (VEC * sizeof(T) == 16), p 16-byte aligned; VEC == 1
// is a plain scalar access.
template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const typename AccOf<T>::type* a) {
    static_assert(VEC == 1 || VEC * sizeof(T) == 16, "store_vec moves 16 bytes");
    if constexpr (VEC == 1) {
        *p = Conv<T>::from(a[0]);
    } else {
        union { uint4 u; T e[VEC]; } v;
#pragma unroll
        for (int i = 0; i < VEC; ++i) v.e[i] = Conv<T>::from(a[i]);
        st_global16(p, v.u);
    }
}

// 16 read-only bytes whose lines are not allocated in L1 (data read once).
__device__ __forceinline__ uint4 ld_global16_no_l1(const void* p) {
    uint4 u;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "l"(p));
    return u;
}

// Elements from the 16-byte boundary at or below p up to p (VEC > 1; 0 for scalars).
// The row kernels read a row in vectors from that boundary on, its first h slots masked:
// rows whose length or stride is no multiple of 16 bytes still move in 16-byte vectors.
template <typename T, int VEC> __device__ __forceinline__ int head_slots(const T* p) {
    if constexpr (VEC == 1) return 0;
    else return (int)((reinterpret_cast<unsigned long long>(p) & 15) / sizeof(T));
}

// The same 16 bytes without conversion (16-bit elements stay packed in registers).
// NO_L1: the lines are not allocated in L1 (see Hold below).
template <typename T, int VEC, bool NO_L1 = false>
__device__ __forceinline__ void load_raw(const T* p, T* a) {
    if constexpr (VEC == 1) {
        a[0] = ldg(p);
    } else {
        union { uint4 u; T e[VEC]; } v;
        if constexpr (NO_L1)
            v.u = ld_global16_no_l1(p);
        else
            v.u = __ldg(reinterpret_cast<const uint4*>(p));
#pragma unroll
        for (int i = 0; i < VEC; ++i) a[i] = v.e[i];
    }
}

template <typename T> __device__ __forceinline__ T raw_neg_inf() { return T(-__int_as_float(0x7f800000)); }
template <> __device__ __forceinline__ double raw_neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ll);
}
template <> __device__ __forceinline__ half_t raw_neg_inf<half_t>() { half_t h; h.bits = 0xfc00; return h; }
template <> __device__ __forceinline__ bf16_t raw_neg_inf<bf16_t>() { bf16_t h; h.bits = 0xff80; return h; }

// ------------------------------------------------------------------ arithmetic without FTZ
__device__ __forceinline__ float add_nf(float a, float b) {
    float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float mul_nf(float a, float b) {
    float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ float max_nf(float a, float b) {   // NaN-ignoring, like fmaxf
    float r; asm("max.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r;
}
__device__ __forceinline__ double add_nf(double a, double b) { return a + b; }
__device__ __forceinline__ double mul_nf(double a, double b) { return a * b; }
__device__ __forceinline__ double max_nf(double a, double b) { return fmax(a, b); }

__device__ __forceinline__ bool is_finite(float v) {
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool is_finite(double v) {
    return (__double_as_longlong(v) & 0x7ff0000000000000ll) != 0x7ff0000000000000ll;
}
__device__ __forceinline__ bool is_zero(float v) { return (__float_as_uint(v) << 1) == 0u; }
__device__ __forceinline__ bool is_zero(double v) {
    return (((unsigned long long)__double_as_longlong(v)) << 1) == 0ull;
}
__device__ __forceinline__ float abs_bits(float v) {
    return __uint_as_float(__float_as_uint(v) & 0x7fffffffu);
}
__device__ __forceinline__ double abs_bits(double v) { return fabs(v); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __uint_as_float(0xff800000u); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ll);
}
template <typename A> __device__ __forceinline__ A qnan();
template <> __device__ __forceinline__ float qnan<float>() { return __uint_as_float(0x7fc00000u); }
template <> __device__ __forceinline__ double qnan<double>() {
    return __longlong_as_double(0x7ff8000000000000ll);
}

// Pairwise max of two packed 16-bit pairs, NaN-ignoring like max_nf.
template <typename T> __device__ __forceinline__ unsigned max2(unsigned a, unsigned b);
template <> __device__ __forceinline__ unsigned max2<half_t>(unsigned a, unsigned b) {
    unsigned r; asm("max.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b)); return r;
}
template <> __device__ __forceinline__ unsigned max2<bf16_t>(unsigned a, unsigned b) {
    unsigned r; asm("max.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b)); return r;
}

// ------------------------------------------------------------------ a thread's chunk
// A softmax kernel reads its chunk once and keeps it until the output is written: NV
// vectors of VEC elements per thread, held as Hold says.
enum Hold : int {
    // Registers: loads as they come, the reductions start on the first vectors while
    // later ones are in flight.
    IN_REGISTERS = 0,
    // The same, the lines not allocated in L1: rows of 128 float32 (several rows a
    // warp) 20.4 -> 19.7 us for 65536x128 on the H200, but warp rows of 1024 slower
    // (70.3 -> 72.9 us), so it is the size table's choice.
    IN_REGISTERS_NO_L1 = 1,
    // Shared memory: a 16-byte vector is copied with cp.async, which holds no register
    // while in flight, so a block keeps a large chunk in flight with few registers and
    // more blocks fit on an SM.  Slot v of thread tid holds VEC elements at
    // (v * THREADS + tid) * VEC: a warp's slots are consecutive (conflict-free), and a
    // thread reads back only its own slots (no barrier).
    STAGED = 2,
};
// The L2::128B prefetch-size hint: staged softmax rows 1-3 points of copy faster (H200,
// session 6: f32 8192x32000 85.4% -> 87.9%, f16 83.7% -> 86.3%; L2::256B gained half as much).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;" :: "r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}

extern __shared__ __align__(16) unsigned char cs_dynamic_smem[];

// f(Whole<true>()) where a thread's vectors are all whole (the common case, compiled
// without a check per vector), f(Whole<false>()) otherwise.  The checks cost even when
// every one passes: f32 rows of 131072, 2.5 us of 46 (H200, bench/NOTES.md session 23).
template <bool B> struct Whole { static constexpr bool value = B; };
template <typename F> __device__ __forceinline__ void with_whole(bool whole, F f) {
    if (whole) f(Whole<true>());
    else f(Whole<false>());
}

// m[i] <- the max of element i of a chunk's NV vectors (NaN-ignoring, like max_nf): the
// row max of a row chunk, the column maxima of a column chunk.
template <int NV, int VEC, typename C, typename A>
__device__ __forceinline__ void chunk_column_max(const C& chunk, A* m) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) m[i] = neg_inf<A>();
#pragma unroll
    for (int v = 0; v < NV; ++v) {
        A a[VEC];
        chunk.get(v, a);
#pragma unroll
        for (int i = 0; i < VEC; ++i) m[i] = max_nf(m[i], a[i]);
    }
}

template <typename T, int VEC, int THREADS, int NV, int HOLD> struct Chunk {   // registers
    typedef typename AccOf<T>::type A;
    T r[NV * VEC];                                 // as loaded (16-bit ones packed)
    __device__ __forceinline__ void fetch(int v, const T* p) {
        load_raw<T, VEC, HOLD == IN_REGISTERS_NO_L1>(p, r + v * VEC);
    }
    __device__ __forceinline__ void put(int v, const T* e) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) r[v * VEC + i] = e[i];
    }
    __device__ __forceinline__ void wait() const {}
    __device__ __forceinline__ void get(int v, A* a) const {
#pragma unroll
        for (int i = 0; i < VEC; ++i) a[i] = to_acc(r[v * VEC + i]);
    }
    __device__ __forceinline__ void column_max(A* m) const { chunk_column_max<NV, VEC>(*this, m); }
};

template <typename T, int VEC, int THREADS, int NV>
struct Chunk<T, VEC, THREADS, NV, STAGED> {
    typedef typename AccOf<T>::type A;
    union Vec { uint4 u; T e[VEC]; };
    T* base;                                       // slot 0 of this thread
    __device__ __forceinline__ Chunk()
        : base(reinterpret_cast<T*>(cs_dynamic_smem) + threadIdx.x * VEC) {}
    __device__ __forceinline__ T* slot(int v) const { return base + v * THREADS * VEC; }
    // Vector v <- the VEC elements at p (16-byte aligned when VEC > 1).
    __device__ __forceinline__ void fetch(int v, const T* p) {
        if constexpr (VEC == 1) *slot(v) = ldg(p);
        else cp_async16(slot(v), p);
    }
    // Vector v <- VEC raw elements given by the thread (tails, masked parts).
    __device__ __forceinline__ void put(int v, const T* e) {
        if constexpr (VEC == 1) {
            *slot(v) = e[0];
        } else {
            Vec w;
#pragma unroll
            for (int i = 0; i < VEC; ++i) w.e[i] = e[i];
            *reinterpret_cast<uint4*>(slot(v)) = w.u;
        }
    }
    __device__ __forceinline__ void wait() const {
        if constexpr (VEC > 1) cp_async_wait_all();
    }
    // The VEC elements of vector v, converted to the accumulator type.
    __device__ __forceinline__ void get(int v, A* a) const {
        if constexpr (VEC == 1) {
            a[0] = to_acc(*slot(v));
        } else {
            Vec w;
            w.u = *reinterpret_cast<const uint4*>(slot(v));
#pragma unroll
            for (int i = 0; i < VEC; ++i) a[i] = to_acc(w.e[i]);
        }
    }
    // As chunk_column_max; 16-bit vectors two elements at a time on the packed pairs,
    // converted once at the end (unrolled by 4: the 8 vectors of bfloat16 rows of 64
    // elements a thread, unrolled in full, spilled at the staged rows' 40 registers).
    __device__ __forceinline__ void column_max(A* m) const {
        if constexpr (sizeof(T) == 2 && VEC > 1) {
            uint4 p = *reinterpret_cast<const uint4*>(slot(0));
#pragma unroll 4
            for (int v = 1; v < NV; ++v) {
                const uint4 w = *reinterpret_cast<const uint4*>(slot(v));
                p.x = max2<T>(p.x, w.x);
                p.y = max2<T>(p.y, w.y);
                p.z = max2<T>(p.z, w.z);
                p.w = max2<T>(p.w, w.w);
            }
            Vec w;
            w.u = p;
#pragma unroll
            for (int i = 0; i < VEC; ++i) m[i] = to_acc(w.e[i]);
        } else {
            chunk_column_max<NV, VEC>(*this, m);
        }
    }
};

// Loads that skip L1 (partial states published by other blocks of the same launch).
__device__ __forceinline__ float ld_cg(const float* p) {
    float v; asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p)); return v;
}
__device__ __forceinline__ double ld_cg(const double* p) {
    double v; asm volatile("ld.global.cg.f64 %0, [%1];" : "=d"(v) : "l"(p)); return v;
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// Counts one arrival: releases the writes that happen before it (the caller's block's,
// after a __syncthreads) and acquires those of the arrivals before it, in one round trip
// to L2 where a __threadfence on each side costs one more.
__device__ __forceinline__ unsigned arrive_acq_rel(unsigned* p) {
    unsigned old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(p) : "memory");
    return old;
}

// ------------------------------------------------------------------ exp and log
__device__ __forceinline__ float ex2_ftz(float v) {
    float r; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v)); return r;
}

// e^x to about 2 ulp (like expf), exact at +-inf and NaN, subnormal results kept.
__device__ __forceinline__ float exp_acc(float x) {
    float j = rintf(x * 1.44269504f);
    j = fminf(fmaxf(j, -160.0f), 130.0f);        // NaN x: r below is NaN anyway
    float r = fmaf(j, -0.693145752f, x);         // ln2 split in two: j * hi is exact
    r = fmaf(j, -1.42860677e-6f, r);
    const float p = ex2_ftz(r * 1.44269504f);    // e^r, |r| <= ~0.35; 0 at -inf, inf at inf
    const int ji = (int)j;
    const int j1 = ji >> 1, j2 = ji - j1;        // 2^j = 2^j1 * 2^j2, each a normal float
    return mul_nf(mul_nf(p, __int_as_float((j1 + 127) << 23)), __int_as_float((j2 + 127) << 23));
}
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

// Cheaper e^t for sums and for 16-bit outputs: 2^(t log2 e); relative error about
// |t| * 6e-8 + 2 ulp, which leaves a sum accurate to a few ulp (its large terms have
// small |t|).  Subnormal terms flush, which cannot move a sum whose largest term is ~1.
__device__ __forceinline__ float exp_fast(float t) { return ex2_ftz(t * 1.44269504f); }
__device__ __forceinline__ double exp_fast(double t) { return exp(t); }

// log that sees subnormal arguments (logf under -ftz=true would take them as 0).
__device__ __forceinline__ float log_acc(float v) {
    const unsigned u = __float_as_uint(v) & 0x7fffffffu;
    if (u != 0u && u < 0x00800000u)
        return logf(mul_nf(v, 16777216.0f)) - 16.6355323334386863f;   // 24 ln 2
    return logf(v);
}
__device__ __forceinline__ double log_acc(double v) { return log(v); }

// e^t for softmax outputs: the fast form, with results below float32's normal range
// taken as 2^(y + 64) * 2^-64, so that subnormal probabilities keep their few bits
// (-ftz=true would flush them); no branch.  Relative error about |t| * 6e-8 + 2 ulp.
__device__ __forceinline__ float exp_out(float t) {
    const float y = t * 1.44269504f;
    const bool low = y < -126.0f;                      // false for NaN
    return mul_nf(ex2_ftz(low ? y + 64.0f : y), low ? 5.42101086e-20f : 1.0f);
}

// The exp a softmax output uses: float16's range ends far above float32's subnormals,
// so the fast form is enough there; float32 and bfloat16 outputs keep subnormals.
template <typename T> struct OutExp {
    static __device__ __forceinline__ float f(float t) { return exp_out(t); }
};
template <> struct OutExp<half_t> {
    static __device__ __forceinline__ float f(float t) { return exp_fast(t); }
};
template <> struct OutExp<double> {
    static __device__ __forceinline__ double f(double t) { return exp(t); }
};

// Whether softmax keeps exp(x - m_chunk) in its chunk from the sum pass, so that the
// write pass scales it instead of taking a second exp: float64 only.  float64's exp is a
// software routine; float32's is one MUFU op, which costs less than keeping it
// (bench/NOTES.md, session 14), and a 16-bit chunk would round the exps to its precision.
template <typename T> struct KeepsExp { static constexpr bool value = sizeof(T) == 8; };

// ------------------------------------------------------------------ raw tiles
// K raw elements as loaded, for the streaming (stats) kernels: 16-bit ones two to a
// 32-bit register (as separate values each would take a register of its own).
// Element k (a compile-time index after unrolling) is read back converted.  The 16-byte
// loads allocate no L1 lines (H200, session 27, us: float32 logsumexp 32768x1024 35.1 ->
// 34.5, softmax along axis 0 of 32768x1024 112.5 -> 110.9; 16-bit unchanged).
template <typename T, int K, bool PACK = sizeof(T) == 2> struct RawTile {
    typedef typename AccOf<T>::type A;
    T w[K];
    // elements [at, at + 16 / sizeof(T)) <- the 16 bytes at p (16-byte aligned)
    __device__ __forceinline__ void load16(int at, const T* p) { load_raw<T, 16 / sizeof(T), true>(p, w + at); }
    __device__ __forceinline__ void set(int k, T v) { w[k] = v; }
    __device__ __forceinline__ A get(int k) const { return to_acc(w[k]); }
    // max of elements a0, a0 + STRIDE, ... (K / STRIDE of them: STRIDE 1, the whole tile;
    // else one column of a [row][column] tile)
    template <int STRIDE = 1> __device__ __forceinline__ A max_of(int a0 = 0) const {
        A m = to_acc(w[a0]);
#pragma unroll
        for (int k = 1; k < K / STRIDE; ++k) m = max_nf(m, to_acc(w[a0 + k * STRIDE]));
        return m;
    }
};
template <typename T, int K> struct RawTile<T, K, true> {
    static_assert(K % 2 == 0, "16-bit elements in pairs");
    unsigned w[K / 2];
    __device__ __forceinline__ void load16(int at, const T* p) {
        const uint4 u = ld_global16_no_l1(p);
        w[at / 2] = u.x; w[at / 2 + 1] = u.y; w[at / 2 + 2] = u.z; w[at / 2 + 3] = u.w;
    }
    // (call for k, k + 1 in this order: an even k starts its pair)
    __device__ __forceinline__ void set(int k, T v) {
        const unsigned b = v.bits;
        if (k & 1) w[k / 2] |= b << 16;
        else w[k / 2] = b;
    }
    __device__ __forceinline__ float get(int k) const {
        T v;
        v.bits = (unsigned short)((k & 1) ? w[k / 2] >> 16 : w[k / 2] & 0xffffu);
        return to_acc(v);
    }
    // As RawTile::max_of, on the packed pairs (exact; no element is converted twice).  An
    // even STRIDE keeps a column in one half of its pairs: the max of a pair of columns
    // is one chain, which the two columns' calls share.
    template <int STRIDE = 1> __device__ __forceinline__ float max_of(int a0 = 0) const {
        static_assert(STRIDE == 1 || STRIDE % 2 == 0, "columns stay in one half of a pair");
        constexpr int STEP = STRIDE == 1 ? 1 : STRIDE / 2;          // in pairs
        constexpr int PAIRS = STRIDE == 1 ? K / 2 : K / STRIDE;
        unsigned m = w[a0 / 2];
#pragma unroll
        for (int q = 1; q < PAIRS; ++q) m = max2<T>(m, w[a0 / 2 + q * STEP]);
        T lo, hi;
        lo.bits = (unsigned short)(m & 0xffffu);
        hi.bits = (unsigned short)(m >> 16);
        if constexpr (STRIDE == 1) return max_nf(to_acc(lo), to_acc(hi));
        else return to_acc((a0 & 1) ? hi : lo);
    }
};

// ------------------------------------------------------------------ the state algebra
template <typename A> struct State { A m, s; };

template <typename A> __device__ __forceinline__ State<A> empty_state() {
    State<A> st; st.m = neg_inf<A>(); st.s = A(0); return st;
}
template <typename A> __device__ __forceinline__ A shift(A m) { return is_finite(m) ? m : A(0); }

template <typename A> __device__ __forceinline__ A rescale(A mi, A m) {
    if (mi == m) return A(1);                    // also +-inf == +-inf: exp(shift) = 1
    return is_finite(m) ? exp_acc(mi - m) : exp_acc(shift(mi));
}

template <typename A> __device__ __forceinline__ State<A> merge(State<A> a, State<A> b) {
    State<A> r;
    r.m = max_nf(a.m, b.m);
    r.s = add_nf(mul_nf(a.s, rescale(a.m, r.m)), mul_nf(b.s, rescale(b.m, r.m)));
    return r;
}

// K states merged in one step: the max of all, then every sum rescaled to it and added
// in index order (a short dependency chain; the same bits wherever the order is the same).
template <int K, typename A> __device__ __forceinline__ State<A> merge_all(const State<A>* p) {
    State<A> r;
    r.m = p[0].m;
#pragma unroll
    for (int q = 1; q < K; ++q) r.m = max_nf(r.m, p[q].m);
    r.s = A(0);
#pragma unroll
    for (int q = 0; q < K; ++q) r.s = add_nf(r.s, mul_nf(p[q].s, rescale(p[q].m, r.m)));
    return r;
}

// Weighted element: b == 0 masks a, even where a is inf or NaN.
template <typename A> __device__ __forceinline__ A masked(A a, A b) {
    return is_zero(b) ? neg_inf<A>() : a;
}

// Fold K elements into a state: element k is a.get(a0 + k * STRIDE) (a RawTile; padding
// is -inf; STRIDE 1: the whole tile, a0 = 0), with weights w[k * STRIDE] (0 masks the
// element, even inf or NaN).
template <typename A, int K, bool HAS_B, int STRIDE = 1, typename Tile>
__device__ __forceinline__ void fold_tile(State<A>& st, const Tile& a, int a0, const A* w) {
    A tm = neg_inf<A>();
    if constexpr (!HAS_B) {
        tm = a.template max_of<STRIDE>(a0);
    } else {
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const A v = a.get(a0 + k * STRIDE);
            tm = max_nf(tm, HAS_B ? masked(v, w[k * STRIDE]) : v);
        }
    }
    const A m = max_nf(st.m, tm);
    const A sh = shift(m);
    A acc = A(0);
#pragma unroll
    for (int k = 0; k < K; ++k) {
        const A v = a.get(a0 + k * STRIDE);
        if (HAS_B) {
            const A wk = w[k * STRIDE];
            acc = add_nf(acc, mul_nf(wk, exp_fast(masked(v, wk) - sh)));
        } else {
            acc = add_nf(acc, exp_fast(v - sh));
        }
    }
    st.s = add_nf(mul_nf(st.s, rescale(st.m, m)), acc);
    st.m = m;
}

// Finalisers.
template <typename A> __device__ __forceinline__ A lse_of(State<A> st) {
    return shift(st.m) + log_acc(abs_bits(st.s));
}
__device__ __forceinline__ bool sign_bit(float v) { return (__float_as_uint(v) >> 31) != 0u; }
__device__ __forceinline__ bool sign_bit(double v) { return __double_as_longlong(v) < 0; }
template <typename A> __device__ __forceinline__ A sign_of(A s) {     // NaN for NaN
    if (s != s) return s;
    if (is_zero(s)) return A(0);
    return sign_bit(s) ? A(-1) : A(1);
}
template <typename A> __device__ __forceinline__ bool negative(A s) {  // s < 0, subnormals too
    return s == s && !is_zero(s) && sign_bit(s);
}
template <typename A> __device__ __forceinline__ A softmax_inv(State<A> st) {
    return is_finite(st.m) ? A(1) / st.s : qnan<A>();
}

// ------------------------------------------------------------------ reductions
struct MaxOp {
    template <typename A> static __device__ __forceinline__ A id() { return neg_inf<A>(); }
    template <typename A> static __device__ __forceinline__ A op(A a, A b) { return max_nf(a, b); }
};
struct SumOp {
    template <typename A> static __device__ __forceinline__ A id() { return A(0); }
    template <typename A> static __device__ __forceinline__ A op(A a, A b) { return add_nf(a, b); }
};

// All-reduce over aligned groups of `width` lanes (a power of two <= 32); every lane
// of the warp must call it.
template <typename Op, typename A>
__device__ __forceinline__ A warp_allreduce(A v, int width) {
    for (int off = width >> 1; off > 0; off >>= 1)
        v = Op::template op<A>(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

// All-reduce over the whole block (THREADS a multiple of 32, > 32); smem holds
// THREADS / 32 values.  Every warp finishes the reduction itself, in the same order,
// so all threads get bit-identical results.
template <int THREADS, typename Op, typename A>
__device__ __forceinline__ A block_allreduce(A v, A* smem) {
    constexpr int NW = THREADS / 32;
    v = warp_allreduce<Op>(v, 32);
    __syncthreads();                               // smem may still be read by a previous call
    if ((threadIdx.x & 31) == 0) smem[threadIdx.x >> 5] = v;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    v = lane < NW ? smem[lane] : Op::template id<A>();
    return warp_allreduce<Op>(v, 32);
}

// Group of `tpr` threads (a power of two <= 32, or the whole block when tpr == THREADS).
template <int THREADS, typename Op, typename A>
__device__ __forceinline__ A group_allreduce(A v, int tpr, A* smem) {
    if (THREADS > 32 && tpr == THREADS) return block_allreduce<THREADS, Op>(v, smem);
    return warp_allreduce<Op>(v, tpr);
}

// The merge of many states is  m = max m_i,  s = sum s_i rescale(m_i, m):  a max
// reduction, one rescale per thread, a sum reduction.
template <typename A>
__device__ __forceinline__ State<A> warp_allreduce_state(State<A> st, int width) {
    const A m = warp_allreduce<MaxOp>(st.m, width);
    st.s = warp_allreduce<SumOp>(mul_nf(st.s, rescale(st.m, m)), width);
    st.m = m;
    return st;
}

// A partial state that another block of the same launch published (read past L1).
template <typename A>
__device__ __forceinline__ State<A> load_published(const A* m, const A* s, i64 idx) {
    State<A> p;
    p.m = ld_cg(m + idx);
    p.s = ld_cg(s + idx);
    return p;
}

// The `width` lanes of an aligned group (width a power of two <= 32; every lane of the
// warp takes part) merge the G published states at base + q * stride (q < G); every
// lane of the group gets the result.  G == 0 (a lane with no entry): the empty state.
template <typename A>
__device__ __forceinline__ State<A> warp_merge_published(const A* m, const A* s, i64 base,
                                                         i64 stride, i64 G, int width) {
    State<A> g = empty_state<A>();
    const int lane = (int)threadIdx.x & (width - 1);
    for (i64 q = lane; q < G; q += width) g = merge(g, load_published(m, s, base + q * stride));
    return warp_allreduce_state(g, width);
}
template <int THREADS, typename A>
__device__ __forceinline__ State<A> group_allreduce_state(State<A> st, int tpr, A* sm, A* ss) {
    const A m = group_allreduce<THREADS, MaxOp>(st.m, tpr, sm);
    st.s = group_allreduce<THREADS, SumOp>(mul_nf(st.s, rescale(st.m, m)), tpr, ss);
    st.m = m;
    return st;
}

// Reduce VEC columns over the TY rows of a TX x TY block (tid = ty * TX + tx, TX a
// power of two <= THREADS): lanes of a warp with the same tx first (shuffles), then
// the warps through red (VEC * THREADS values).  Every thread of column tx gets the
// totals.
template <int THREADS, int VEC, typename Op, typename A>
__device__ __forceinline__ void column_allreduce(A* v, A* red, int TX) {
    constexpr int NW = THREADS / 32;
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int tx = tid & (TX - 1);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        for (int off = 16; off >= TX; off >>= 1)
            v[e] = Op::template op<A>(v[e], __shfl_xor_sync(0xffffffffu, v[e], off));
    }
    if (TX >= THREADS) return;                     // one row of threads: nothing to combine
    __syncthreads();                               // red may still be read by a previous call
    if (TX <= 32) {                                // every warp holds every column: one slot each
        if (lane < TX) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) red[(e * NW + warp) * 32 + lane] = v[e];
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            A t = red[(e * NW) * 32 + tx];
            for (int w = 1; w < NW; ++w) t = Op::template op<A>(t, red[(e * NW + w) * 32 + tx]);
            v[e] = t;
        }
    } else {                                       // TX > 32: warps of one tx-row differ in
        const int TY = THREADS / TX;               // tx; reduce over the TY thread rows
#pragma unroll
        for (int e = 0; e < VEC; ++e) red[e * THREADS + tid] = v[e];
        __syncthreads();
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            A t = red[e * THREADS + tx];
            for (int y = 1; y < TY; ++y) t = Op::template op<A>(t, red[e * THREADS + y * TX + tx]);
            v[e] = t;
        }
    }
}

template <int THREADS, int VEC, typename A>
__device__ __forceinline__ void column_allreduce_state(State<A>* st, A* red, int TX) {
    A m[VEC], t[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) m[e] = st[e].m;
    column_allreduce<THREADS, VEC, MaxOp>(m, red, TX);
#pragma unroll
    for (int e = 0; e < VEC; ++e) t[e] = mul_nf(st[e].s, rescale(st[e].m, m[e]));
    column_allreduce<THREADS, VEC, SumOp>(t, red, TX);
#pragma unroll
    for (int e = 0; e < VEC; ++e) { st[e].m = m[e]; st[e].s = t[e]; }
}

// ------------------------------------------------------------------ inter-block exchange
// A slice split over G blocks keeps two counters per slice, cnt[0] (arrivals) and
// cnt[1] (departures), in a buffer that is zero between launches: the blocks reset it.
//
// Split softmax (cooperative launch: all blocks resident).  A block publishes its
// partial states, arrives and waits for the G blocks of its slice, reads their states,
// then departs; the last to depart zeroes both counters.  Call with the whole block.
__device__ __forceinline__ void group_arrive_and_wait(unsigned* cnt, i64 expected) {
    __threadfence();                               // every thread's published states
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(cnt, 1u);
        while ((i64)ld_acquire(cnt) < expected) __nanosleep(64);
    }
    __syncthreads();
}
__device__ __forceinline__ void group_depart(unsigned* cnt, i64 expected) {
    if (threadIdx.x == 0 && (i64)atomicAdd(cnt + 1, 1u) == expected - 1) {
        cnt[0] = 0u;                               // every block has passed its wait
        cnt[1] = 0u;
    }
}

// Split statistics (ordinary launch, no waiting): a block publishes its partial
// states and counts itself in; the block that arrives last (true in all its threads)
// zeroes the counter and merges the G states.  `flag` is a shared int.
__device__ __forceinline__ bool group_arrive_last(unsigned* cnt, i64 expected, int* flag) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const bool last = (i64)atomicAdd(cnt, 1u) == expected - 1;
        if (last) cnt[0] = 0u;
        *flag = last;
    }
    __syncthreads();
    const bool last = *flag != 0;
    if (last) __threadfence();
    return last;
}


// __cluster_dims__ exists from sm_90 on; older targets compile an instance without it
// (the dispatch never launches a cluster instance there).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define CS_CLUSTER_DIMS(X, Y, Z) __cluster_dims__(X, Y, Z)
#else
#define CS_CLUSTER_DIMS(X, Y, Z)
#endif

// Thread-block cluster (sm_90): the G blocks of a split slice form one cluster
// (__cluster_dims__), each publishes its block state in its own shared memory, and every
// block reads the G states through distributed shared memory and merges them in the
// same order (bit-identical results).  No global memory, no atomics, no cooperative
// launch.  cluster_exchange_state ends with an arrive; the block calls cluster_wait()
// before it leaves (or publishes again), so that no peer reads freed shared memory.
__device__ __forceinline__ void cluster_arrive() {          // publishes this block's writes
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_arrive_relaxed() {  // orders nothing (no fence)
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// The address of *p (this block's shared memory) in the shared memory of block `rank` of
// the cluster, as a generic pointer: plain loads through it read the peer's copy.
template <typename T> __device__ __forceinline__ T* peer_ptr(T* p, unsigned rank) {
#if __CUDA_ARCH__ >= 900
    unsigned long long a;
    asm("mapa.u64 %0, %1, %2;" : "=l"(a) : "l"(p), "r"(rank));
    return reinterpret_cast<T*>(a);
#else
    __trap();
    return p;
#endif
}
template <typename A> __device__ __forceinline__ A ld_peer(const A* p, unsigned rank) {
    return *peer_ptr(p, rank);
}

// st: the state of the calling warp (the same in its lanes); pub: THREADS / 32 __shared__
// States of this block.  Call with the whole block, in every block of the cluster (block
// rank = position in the cluster).  Every warp merges the G x THREADS / 32 warp states
// itself, in the same order (bit-identical results).  Warp states, not block states: a
// block's max, then its sum, held every warp's sum pass, and then the exchange, until the
// whole block had its max (H200, session 23: f32 8192x32000 softmax 562 -> 520 us, f16
// 287 -> 272, f32 128x131072 48.4 -> 45.6-46.3).
template <int THREADS, int G, typename A>
__device__ __forceinline__ State<A> cluster_exchange_state(State<A> st, State<A>* pub) {
    constexpr int NW = THREADS / 32;
    static_assert(G >= 2 && G <= 32 && THREADS % 32 == 0, "a cluster of 2..32 blocks of whole warps");
    const unsigned lane = threadIdx.x & 31;
    if (lane == 0) pub[threadIdx.x >> 5] = st;
    cluster_arrive();                              // publish (release) ...
    cluster_wait();                                // ... and see every peer's (acquire)
    State<A> g = empty_state<A>();
    for (int q = lane; q < G * NW; q += 32) {      // state q: warp q % NW of block q / NW
        State<A> p;
        p.m = ld_peer(&pub[q % NW].m, (unsigned)(q / NW));
        p.s = ld_peer(&pub[q % NW].s, (unsigned)(q / NW));
        g = merge(g, p);
    }
    g = warp_allreduce_state(g, 32);               // (uses the loaded values: reads are done)
    cluster_arrive_relaxed();                      // done reading the peers
    return g;
}

// The column version: every thread of column tx holds the block's states st[VEC] of
// its VEC columns (a TX x TY block, TX <= 32); pub: VEC * 32 __shared__ states, red:
// VEC * THREADS of the block's reduction scratch.  Thread (tx, e) for e < VEC reads the
// G blocks' states of column e and merges them in rank order (merge_all: every block of
// the cluster gets the same bits) for the rest of its column: one block barrier, where a
// reduction over the thread rows took four.  Ends like cluster_exchange_state.
template <int THREADS, int VEC, int G, typename A>
__device__ __forceinline__ void column_exchange_cluster(State<A>* st, State<A>* pub, A* red,
                                                        int tx, int ty) {
    static_assert(G >= 2 && G <= 32, "a cluster of 2..32 blocks");
    static_assert(THREADS / 32 >= VEC && THREADS >= 64, "a thread row per column, red holds them");
    if (ty == 0) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) pub[tx * VEC + e] = st[e];
    }
    cluster_arrive();                              // (also ends every read of red so far)
    cluster_wait();
    State<A>* merged = reinterpret_cast<State<A>*>(red);
    if (ty < VEC) {
        const int q0 = tx * VEC + ty;
        State<A> p[G];
#pragma unroll
        for (int q = 0; q < G; ++q) {
            p[q].m = ld_peer(&pub[q0].m, (unsigned)q);
            p[q].s = ld_peer(&pub[q0].s, (unsigned)q);
        }
        merged[q0] = merge_all<G>(p);
    }
    cluster_arrive_relaxed();                      // done reading the peers
    __syncthreads();
#pragma unroll
    for (int e = 0; e < VEC; ++e) st[e] = merged[tx * VEC + e];
}

}  // namespace cs
