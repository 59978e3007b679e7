#!/usr/bin/env python3
"""Compile every kernel entry point with nvcc, without a GPU and without CuPy.

The instance lists are cupy_softmax/_kernels.py's (the softmax family, one module per
dtype) and cupy_softmax/_attention.py's (attention, decode and merge entry points, all in
one module here); both load with NumPy alone, not CuPy.  For each module and each
architecture (sm_90, sm_80; and sm_90a for the attention module, whose wgmma kernels
exist only there) this prints registers, shared memory, stack frame and spills
of every kernel, and exits non-zero on any compile error.  Options mirror CuPy's NVRTC build
(-std=c++17, -ftz=true).

    python tools/check_kernels.py [--arch sm_90 ...] [--dtype float32 ...] [--fail-on-spill]
"""

import argparse
import concurrent.futures
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_kernels_module():
    spec = importlib.util.spec_from_file_location(
        "_cupy_softmax_kernels", ROOT / "cupy_softmax" / "_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def modules(km, dtypes):
    """(label, source, entry points) of every module to compile."""
    src_dir = ROOT / "kernels_cu"
    for dtype in dtypes:
        yield dtype, km.module_source(dtype, src_dir), [name for _, name, _ in km.instances(dtype)]
    sys.path.insert(0, str(ROOT))
    from cupy_softmax import _attention
    attention = _attention.kernel_instances()
    yield ("attention", _attention.module_source(*(line for _, line in attention)),
           [name for name, _ in attention])


def wgmma_arch():
    sys.path.insert(0, str(ROOT))
    from cupy_softmax import _attention
    return _attention.WGMMA_ARCH


def find_nvcc():
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/bin/nvcc",
                 "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


def parse_ptxas(text):
    """{kernel: {regs, smem, stack, spill_st, spill_ld}} from -Xptxas -v output."""
    res, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = m.group(1)
            res[cur] = {"regs": 0, "smem": 0, "stack": 0, "spill_st": 0, "spill_ld": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            res[cur]["stack"], res[cur]["spill_st"], res[cur]["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            res[cur]["regs"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            res[cur]["smem"] = int(m2.group(1)) if m2 else 0
    return res


def compile_one(nvcc, km, label, source, arch, workdir):
    src_dir = ROOT / "kernels_cu"
    cu = pathlib.Path(workdir) / f"{label}_{arch}.cu"
    cu.write_text(source)
    out = pathlib.Path(workdir) / f"{label}_{arch}.cubin"
    cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-ftz=true", "-Xptxas", "-v",
           f"-I{src_dir}", f"-DCUPY_SOFTMAX_SRC_HASH={km.source_hash(str(src_dir))}",
           "-o", str(out), str(cu)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--arch", nargs="+", default=["sm_90", "sm_80"])
    ap.add_argument("--dtype", nargs="+", default=None)
    ap.add_argument("--fail-on-spill", action="store_true")
    args = ap.parse_args()

    km = load_kernels_module()
    dtypes = args.dtype or list(km.DTYPES)
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_kernels: nvcc not found", file=sys.stderr)
        return 2
    sources = {label: (source, names) for label, source, names in modules(km, dtypes)}
    expected = {label: names for label, (_, names) in sources.items()}

    failed, spills = False, 0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(label, a) for label in sources for a in args.arch]
        # the wgmma instances: their code exists only for the arch-specific Hopper target
        if "sm_90" in args.arch and "attention" in sources:
            jobs.append(("attention", wgmma_arch()))
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
            results = list(ex.map(
                lambda job: compile_one(nvcc, km, job[0], sources[job[0]][0], job[1], tmp), jobs))
    for (label, arch), (rc, log) in zip(jobs, results):
        print(f"== {label} {arch}: {'ok' if rc == 0 else 'COMPILE ERROR'}")
        if rc != 0:
            failed = True
            print(log)
            continue
        info = parse_ptxas(log)
        missing = [n for n in expected[label] if n not in info]
        if missing:
            failed = True
            print(f"   missing entry points: {missing}")
        print(f"   {'kernel':<40} {'regs':>4} {'smem':>6} {'stack':>5} {'spill st/ld':>11}")
        for name in expected[label]:
            r = info.get(name)
            if r is None:
                continue
            flag = ""
            if r["spill_st"] or r["spill_ld"]:
                spills += 1
                flag = "  <-- spills"
            print(f"   {name:<40} {r['regs']:>4} {r['smem']:>6} {r['stack']:>5} "
                  f"{r['spill_st']:>5}/{r['spill_ld']:<5}{flag}")
        warnings = [l for l in log.splitlines() if "warning" in l.lower()]
        for w in warnings[:20]:
            print("   " + w)
    print(f"check_kernels: {'FAILED' if failed else 'ok'}; kernels with spills: {spills}")
    if failed or (args.fail_on_spill and spills):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
