#!/usr/bin/env python3
"""What the GPU itself does with the benchmark's bytes, measured the same way as our kernels.

    python bench/ceilings.py --out DIR [--reps N]

Issue 3's targets are fractions of the copy bandwidth of a 2 GiB device-to-device copy.
On a 64 MiB input a kernel also pays its launch, its ramp and its tail, which a 2 GiB copy
spreads thin.  For each input size of the benchmark this times, with `bench_gpu.time_op`
(CUDA events, a spin before each call, inputs rotated over >= 3x L2):

* an empty kernel (the fixed cost between the two events);
* the fastest of a sweep of plain read kernels over the input (16-byte loads, plain or
  streaming, grid-stride or one span a block, 256-1024 threads, 1-4 blocks an SM, 4 or 8
  loads in flight a thread): the most a logsumexp of that size could reach;
* a driver memcpy of the input (input read once, written once: the bytes softmax moves);
* a read of the input followed by its memcpy: what a route that reads the input twice
  (stats, then normalise) moves, against softmax's model bytes.

Percentages are of the copy bandwidth of the same run, with the model bytes of the
operation the line stands for (input for a read, input + output for the others).
Writes DIR/ceilings.md and DIR/ceilings.json.
"""

import argparse
import json
import os

import cupy

import bench_gpu as B

_READ_SRC = r"""
template <bool STREAMING>
__device__ __forceinline__ float4 load(const float4* p) { return STREAMING ? __ldcs(p) : __ldg(p); }

template <int U, bool STREAMING>
__device__ void read_all(const float4* __restrict__ x, long long n4, int span, float* sink) {
    long long i, end, step;
    if (span) {                        // one contiguous span a block
        long long per = (n4 + gridDim.x - 1) / gridDim.x;
        i = blockIdx.x * per + threadIdx.x;
        end = min(n4, (blockIdx.x + 1) * per);
        step = blockDim.x;
    } else {                           // grid-stride
        i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
        end = n4;
        step = (long long)gridDim.x * blockDim.x;
    }
    float acc = 0.f;
    for (; i + (U - 1) * step < end; i += U * step) {
        float4 v[U];
#pragma unroll
        for (int k = 0; k < U; ++k) v[k] = load<STREAMING>(x + i + k * step);
#pragma unroll
        for (int k = 0; k < U; ++k) acc += (v[k].x + v[k].y) + (v[k].z + v[k].w);
    }
    for (; i < end; i += step) {
        float4 v = load<STREAMING>(x + i);
        acc += (v.x + v.y) + (v.z + v.w);
    }
    if (acc == 1234.5f) *sink = acc;   // keeps the loads; random inputs never sum to it
}
#define READ_KERNEL(U, STREAMING, NAME)                                                    \
    extern "C" __global__ void NAME(const float4* x, long long n4, int span, float* sink) { \
        read_all<U, STREAMING>(x, n4, span, sink);                                          \
    }
READ_KERNEL(4, false, read_u4_ldg)
READ_KERNEL(8, false, read_u8_ldg)
READ_KERNEL(4, true, read_u4_ldcs)
READ_KERNEL(8, true, read_u8_ldcs)
extern "C" __global__ void empty_kernel() { }
"""

# (label, input bytes): the benchmark's 64 MiB shapes, a 128 MiB one and the largest.
SIZES = [("64 MiB: f32 4096x4096, 128x131072; f16 32768x1024", 64 << 20),
         ("128 MiB: f32 32768x1024", 128 << 20),
         ("1000 MiB: f32 8192x32000", 8192 * 32000 * 4)]
READ_CONFIGS = [{"span": span, "threads": threads, "blocks_per_sm": bps, "kernel": f"read_u{u}_{load}"}
                for span in (0, 1) for threads in (256, 512, 1024)
                for bps in (1, 2, 4) if threads * bps <= 2048
                for u in (4, 8) for load in ("ldg", "ldcs")]


def _module():
    return cupy.RawModule(code=_READ_SRC, options=("-std=c++17",))


def fastest_read(mod, bufs, nsm, reps):
    """(us, config) of the fastest read kernel over the rotated buffers."""
    sink = cupy.zeros(1, cupy.float32)
    best = None
    for cfg in READ_CONFIGS:
        us = B.time_op(reader(mod, cfg, nsm, sink), [(b,) for b in bufs], reps)
        if best is None or us < best[0]:
            best = (us, cfg)
    return best


def reader(mod, cfg, nsm, sink):
    """fn(x): one launch of the read kernel `cfg` over x."""
    kern = mod.get_function(cfg["kernel"])
    grid, block, span = (cfg["blocks_per_sm"] * nsm,), (cfg["threads"],), cupy.int32(cfg["span"])
    return lambda x: kern(grid, block, (x, cupy.int64(x.size // 4), span, sink))


def measure(reps, l2_bytes, copy_gbps, nsm):
    mod = _module()
    empty = mod.get_function("empty_kernel")
    empty_us = B.time_op(lambda: empty((1,), (32,), ()), [()], reps)
    rows = []
    for label, nbytes in SIZES:
        bufs = B.make_inputs((nbytes // 4,), "float32", l2_bytes)
        out = cupy.empty_like(bufs[0])
        stream = cupy.cuda.get_current_stream()

        def memcpy(x):
            cupy.cuda.runtime.memcpyAsync(out.data.ptr, x.data.ptr, nbytes, 3, stream.ptr)
        read_us, cfg = fastest_read(mod, bufs, nsm, reps)
        read = reader(mod, cfg, nsm, cupy.zeros(1, cupy.float32))

        def read_then_copy(x):
            read(x)
            memcpy(x)
        copy_us = B.time_op(memcpy, [(b,) for b in bufs], reps)
        twice_us = B.time_op(read_then_copy, [(b,) for b in bufs], reps)
        pct = lambda model, us: 100 * model / (us * 1e-6) / 1e9 / copy_gbps  # noqa: E731
        rows.append({"label": label, "bytes": nbytes,
                     "target_read_us": nbytes / (0.85 * copy_gbps * 1e3),
                     "target_softmax_us": 2 * nbytes / (0.85 * copy_gbps * 1e3),
                     "read_us": read_us, "read_pct": pct(nbytes, read_us), "read_config": cfg,
                     "memcpy_us": copy_us, "memcpy_pct": pct(2 * nbytes, copy_us),
                     "read_then_copy_us": twice_us, "read_then_copy_pct": pct(2 * nbytes, twice_us)})
        del bufs, out
        cupy.get_default_memory_pool().free_all_blocks()
    return empty_us, rows


def table(gpu, copy_gbps, on_chip_mib, empty_us, rows):
    lines = [f"GPU: {gpu}; device-to-device copy: {copy_gbps:.0f} GB/s (2 GiB); on-chip storage "
             f"(shared memory + registers of every SM): {on_chip_mib:.1f} MiB; "
             f"empty kernel between the events: {empty_us:.1f} us", "",
             "| input | 85% of copy: read / softmax us | fastest read us | % copy | "
             "memcpy of the input us | % copy | read, then memcpy us | % copy (softmax bytes) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['target_read_us']:.1f} / {r['target_softmax_us']:.1f} | "
                     f"{r['read_us']:.1f} | {r['read_pct']:.1f}% | {r['memcpy_us']:.1f} | "
                     f"{r['memcpy_pct']:.1f}% | {r['read_then_copy_us']:.1f} | {r['read_then_copy_pct']:.1f}% |")
    best = "; ".join(f"{r['label'].split(':')[0]}: {r['read_config']}" for r in rows)
    lines += ["", f"Fastest read configuration ({len(READ_CONFIGS)} tried): {best}"]
    return "\n".join(lines)


def run(out_dir, reps, copy_gbps=None):
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    nsm = props["multiProcessorCount"]
    gpu = f"{name} ({nsm} SMs, L2 {props['l2CacheSize'] / 2**20:.0f} MiB)"
    on_chip_mib = nsm * (props["sharedMemPerMultiprocessor"] + 4 * props["regsPerMultiprocessor"]) / 2**20
    copy_gbps = copy_gbps or B.copy_bandwidth()
    empty_us, rows = measure(reps, props["l2CacheSize"], copy_gbps, nsm)
    md = table(gpu, copy_gbps, on_chip_mib, empty_us, rows)
    with open(os.path.join(out_dir, "ceilings.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(out_dir, "ceilings.json"), "w") as f:
        json.dump({"gpu": gpu, "copy_gbps": copy_gbps, "on_chip_mib": on_chip_mib,
                   "empty_us": empty_us, "rows": rows}, f, indent=1)
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    print(run(args.out, args.reps))


if __name__ == "__main__":
    main()
