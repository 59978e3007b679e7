"""The CUDA kernels: size table, instance list, source assembly and compilation.

Everything above ``get_function`` is plain Python and importable without CuPy:
``tools/check_kernels.py`` compiles exactly the instances listed here with nvcc.

Sources live in the subpackage ``cupy_softmax.kernels_cu`` (``kernels_cu/`` in the
repository): ``online_softmax.cuh`` (the state algebra) and ``softmax.cu`` (kernel
templates and ``CS_*`` entry-point macros).  A module is compiled per element dtype
with CuPy's NVRTC path, memoised per device.  CuPy's disk cache keys on the source
string only, not on included headers, so the options carry a hash of every file of
``kernels_cu``.
"""

import functools
import hashlib
import pathlib

# numpy dtype name -> (short key, CUDA element type, itemsize)
DTYPES = {
    "float16": ("f16", "cs::half_t", 2),
    "bfloat16": ("bf16", "cs::bf16_t", 2),
    "float32": ("f32", "float", 4),
    "float64": ("f64", "double", 8),
}

THREADS = 256           # block size of every kernel but the block-per-row softmax ones

# ---------------------------------------------------------------------------------
# Size table of the row softmax (reduced axis last), per itemsize: the first entry
# whose max_n covers the row is taken.  Each thread keeps ept elements in registers
# (16-bit ones packed); tpr threads share a row (a power of two: sub-warp, warp, or
# the whole block).  tpr 0 means "the smallest power of two <= 32 that covers the
# row", so short rows still give every thread ept elements (several loads in flight).
#            max_n   threads  ept  tpr
ROW_TABLE = {
    4: [(512, 256, 16, 0),         # float32: 16-byte vectors of 4
        (1024, 256, 32, 32),       # warp per row up to 1024
        (2048, 256, 8, 256),
        (4096, 256, 16, 256),
        (8192, 256, 32, 256)],     # block per row up to 8192, then split rows
    2: [(1024, 256, 32, 0),        # float16 / bfloat16: vectors of 8
        (2048, 256, 8, 256),
        (4096, 256, 16, 256),
        (8192, 256, 32, 256)],
    8: [(256, 256, 8, 0),          # float64: vectors of 2
        (512, 256, 16, 32),
        (1024, 256, 4, 256),
        (2048, 256, 8, 256),
        (4096, 256, 16, 256)],
}
# Longer rows (or few rows that would leave SMs idle) are split into chunks of
# threads x ept elements, G blocks per row that exchange their partial states (mode 1):
# the largest chunk that still gives every SM a block, else the smallest.
#            (threads, ept), ascending
SPLIT_CHUNKS = {4: [(256, 8), (256, 16)], 2: [(256, 16), (256, 32)], 8: [(256, 8), (256, 16)]}

# Column softmax (reduced axis not last): rows of the chunk each thread keeps
# (R * VEC values in registers); a block covers TY * R rows of n.  Slices of n longer
# than COL_SPLIT_MAX blocks take the three-pass route (stats, merge, normalise).
COL_R = {4: (1, 4, 12), 2: (1, 4, 6), 8: (1, 4, 8)}
COL_SPLIT_MAX = 16


def stats_unroll(itemsize, vec, has_b):
    """Vectors in flight per thread and pass of the stats kernels (as in softmax.cu)."""
    e = (16 if has_b else 32) // (2 if itemsize == 8 else 1)
    return max(e, 8) if vec == 1 else e // vec


def vec_width(itemsize):
    """Elements per 16-byte vector."""
    return 16 // itemsize


def _row_softmax_shapes(itemsize):
    """(threads, ept, split) of every row_softmax instance."""
    plain = {(threads, ept, False) for _, threads, ept, _ in ROW_TABLE[itemsize]}
    split = {(threads, ept, True) for threads, ept in SPLIT_CHUNKS[itemsize]}
    return sorted(plain | split)


def instances(dtype_name):
    """(macro, entry-point name, macro arguments) of every kernel of one dtype."""
    key, ctype, itemsize = DTYPES[dtype_name]
    out = []
    for vec in (vec_width(itemsize), 1):
        for threads, ept, split in _row_softmax_shapes(itemsize):
            minb = row_softmax_min_blocks(itemsize, threads, ept)
            out.append(("CS_ROW_SOFTMAX", row_softmax_name(key, vec, threads, ept, split),
                        (ctype, vec, threads, ept, "true" if split else "false", minb)))
        for has_b in (0, 1):
            out.append(("CS_ROW_STATS", row_stats_name(key, vec, has_b),
                        (ctype, vec, THREADS, "true" if has_b else "false", 2)))
        for r in COL_R[itemsize]:
            out.append(("CS_COL_SOFTMAX", col_softmax_name(key, vec, r),
                        (ctype, vec, THREADS, r, 2)))
        for has_b in (0, 1):
            out.append(("CS_COL_STATS", col_stats_name(key, vec, has_b),
                        (ctype, vec, THREADS, "true" if has_b else "false", 2)))
    out.append(("CS_MERGE_STATES", merge_states_name(key), (ctype, THREADS)))
    return out


def row_softmax_min_blocks(itemsize, threads, ept):
    """__launch_bounds__ minimum blocks per SM: 1024 threads per SM (64 registers),
    512 when a thread holds more than 32 registers of data (64 halves, 16 doubles)."""
    words = ept * itemsize // 4
    return max(1, (512 if words > 32 or (itemsize == 8 and ept >= 16) else 1024) // threads)


def row_softmax_name(key, vec, threads, ept, split=False):
    return f"row_softmax_{key}_v{vec}_t{threads}_e{ept}" + ("_split" if split else "")


def row_stats_name(key, vec, has_b):
    return f"row_stats_{key}_v{vec}_b{int(has_b)}"


def col_softmax_name(key, vec, r):
    return f"col_softmax_{key}_v{vec}_r{r}"


def col_stats_name(key, vec, has_b):
    return f"col_stats_{key}_v{vec}_b{int(has_b)}"


def merge_states_name(key):
    return f"merge_states_{key}"


def source_dir():
    """Directory of the .cu/.cuh files: the installed subpackage, else the checkout."""
    try:
        import importlib.resources
        path = pathlib.Path(str(importlib.resources.files("cupy_softmax.kernels_cu")))
        if (path / "softmax.cu").is_file():
            return path
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return pathlib.Path(__file__).resolve().parent.parent / "kernels_cu"


@functools.lru_cache(maxsize=None)
def source_hash(directory=None):
    """sha256 over every file of kernels_cu (names and contents)."""
    directory = pathlib.Path(directory) if directory else source_dir()
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in (".cu", ".cuh", ".h"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def module_source(dtype_name, directory=None):
    """softmax.cu followed by one entry-point macro per instance of this dtype."""
    directory = pathlib.Path(directory) if directory else source_dir()
    lines = [(directory / "softmax.cu").read_text(), "", f"// instances: {dtype_name}"]
    for macro, name, args in instances(dtype_name):
        lines.append(f"{macro}({name}, {', '.join(str(a) for a in args)})")
    return "\n".join(lines) + "\n"


def compile_options(directory=None):
    directory = pathlib.Path(directory) if directory else source_dir()
    return ("-std=c++17", f"-I{directory}",
            f"-DCUPY_SOFTMAX_SRC_HASH={source_hash(str(directory))}")


# ---------------------------------------------------------------------------------
# CuPy side (imports CuPy lazily).

_modules = {}     # (device, dtype name) -> cupy.RawModule
_functions = {}   # (device, name) -> cupy.cuda.function.Function
_occupancy = {}   # (device, name, threads) -> resident blocks per SM


def _device():
    import cupy
    return cupy.cuda.runtime.getDevice()


def get_module(dtype_name):
    import cupy
    dev = _device()
    mod = _modules.get((dev, dtype_name))
    if mod is None:
        mod = cupy.RawModule(code=module_source(dtype_name), options=compile_options())
        mod.compile()
        _modules[(dev, dtype_name)] = mod
    return mod


def get_function(dtype_name, name):
    """The compiled entry point ``name`` (a cupy.cuda.function.Function)."""
    dev = _device()
    fn = _functions.get((dev, name))
    if fn is None:
        fn = get_module(dtype_name).get_function(name).kernel
        _functions[(dev, name)] = fn
    return fn


def resident_blocks(fn, name, threads):
    """Blocks of ``fn`` that fit on the whole device at once (cooperative launch limit)."""
    dev = _device()
    key = (dev, name, threads)
    v = _occupancy.get(key)
    if v is None:
        from cupy_backends.cuda.api import driver
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, threads, 0)
        v = per_sm * sm_count()
        _occupancy[key] = v
    return v


@functools.lru_cache(maxsize=None)
def _sm_count(dev):
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]


def sm_count():
    return _sm_count(_device())


def compile_all(dtype_names=tuple(DTYPES)):
    """Compile (or load from CuPy's cache) every module; seconds per dtype."""
    import time
    times = {}
    for d in dtype_names:
        t = time.perf_counter()
        get_module(d)
        times[d] = time.perf_counter() - t
    return times
