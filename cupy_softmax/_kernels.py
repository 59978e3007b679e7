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

import ctypes
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
# Where a row_softmax instance keeps its chunk (kernels_cu's enum Hold; the letter ends
# the entry point's name): in registers; in registers, loaded without allocating L1
# lines; staged in shared memory (cp.async).
REGS, REGS_NO_L1, STAGED = "r", "n", "s"
HOLD_ENUM = {REGS: "cs::IN_REGISTERS", REGS_NO_L1: "cs::IN_REGISTERS_NO_L1", STAGED: "cs::STAGED"}

# Size table of the row softmax (reduced axis last), per itemsize: the first entry
# whose max_n covers the row is taken.  A block's threads x ept elements are its chunk,
# read once and written once, held as `hold` says (staged chunks are in flight without
# holding registers, so large chunks keep many blocks per SM; runs 5 and 6 of the
# notes: registers win on float32 rows up to 1024, staging on 16-bit ones; float32
# rows of 2049-4096 staged since session 27, H200 softmax 16384x3000 105.2 -> 102.0
# us, 8192x2500 52.0 -> 51.0, 4096x4096 even).  tpr
# threads share a row (a power of two: sub-warp, warp, or the whole block); tpr 0 means
# "the smallest power of two <= 32 that covers the row", so short rows still give every
# thread ept elements.  G > 1: a row is split over a cluster of G blocks (sm_90) that
# exchange their states through distributed shared memory.  Float32 rows (H200): up to
# 256, 2 vectors a lane at 32 registers (16 blocks of 128 an SM) and no L1 lines,
# 65536x128 softmax 19.2 us against 20.4 us with 4 vectors a lane (19.7 us without L1
# lines; but warp rows of 1024 take 72.9 us without L1 lines against 70.3 us, session
# 6); up to 512, blocks of 128 threads for a finer last wave (session 5); from 641 to
# 1024, a block of 64 threads a row, 4 vectors a thread (40 registers, 25 blocks an SM),
# not a warp with 8 (session 13, us, warp -> block of 64: 32768x1024 softmax 70.3 ->
# 68.0, log_softmax 69.6 -> 67.8, 65536x1024 134.6 -> 130.7, 16384x1000 37.9 -> 36.5,
# 32768x768 54.0 -> 52.1; but 65536x640 softmax 92.9 -> 102.9, so 640 stays a warp's).
#            max_n   threads  ept  tpr    G  hold
ROW_TABLE = {
    4: [(256, 128, 8, 0, 1, REGS_NO_L1),    # float32: sub-warp per row, 16-byte vectors of 4
        (512, 128, 16, 0, 1, REGS),
        (640, 256, 32, 32, 1, REGS),        # warp per row
        (1024, 64, 16, 64, 1, REGS),        # block per row
        (2048, 128, 16, 128, 1, STAGED),
        (4096, 256, 16, 256, 1, STAGED),
        (8192, 256, 32, 256, 1, STAGED),
        (16384, 256, 32, 256, 2, STAGED),   # cluster of G blocks per row, 32 KB each
        (32768, 256, 32, 256, 4, STAGED),
        (65536, 256, 32, 256, 8, STAGED),
        (131072, 256, 64, 256, 8, STAGED)], # 64 KB per block
    2: [(512, 256, 32, 0, 1, STAGED),       # float16 / bfloat16: vectors of 8
        (768, 256, 64, 0, 1, STAGED),       # half-warp rows (session 27, 65536x600 63.2 -> 55.3 us)
        (1024, 256, 32, 0, 1, STAGED),
        (1280, 256, 40, 0, 1, STAGED),      # (rows of 1017-1024 off a 16-byte boundary)
        (2048, 256, 64, 0, 1, STAGED),
        (4096, 128, 32, 128, 1, STAGED),
        (8192, 256, 32, 256, 1, STAGED),
        (16384, 256, 64, 256, 1, STAGED),
        (32768, 256, 64, 256, 2, STAGED),
        (65536, 256, 64, 256, 4, STAGED),
        (131072, 256, 64, 256, 8, STAGED)],
    8: [(256, 256, 8, 0, 1, REGS),          # float64: vectors of 2
        (512, 256, 16, 32, 1, REGS),
        (1024, 128, 8, 128, 1, STAGED),
        (2048, 256, 8, 256, 1, STAGED),
        (4096, 256, 16, 256, 1, STAGED),
        (8192, 256, 16, 256, 2, STAGED),
        (16384, 256, 16, 256, 4, STAGED),
        (32768, 256, 16, 256, 8, STAGED)],
}
# Longer rows, few rows that would leave SMs idle, rows without 16-byte vectors, or a
# GPU without clusters: chunks of threads x ept elements, G blocks per row that exchange
# their partial states through global memory (cooperative launch): the largest chunk
# that still gives every SM a block, else the smallest.
#            (threads, ept), ascending
SPLIT_CHUNKS = {4: [(256, 8), (256, 16), (256, 32)], 2: [(256, 16), (256, 32), (256, 64)],
                8: [(256, 8), (256, 16)]}

# Column softmax (reduced axis not last): rows of the chunk each thread stages (R
# vectors); a block covers TY * R rows of n.  Slices of n longer than COL_SPLIT_MAX
# blocks take the three-pass route (stats, then normalise); shorter ones are split
# over G blocks that exchange states (cooperative launch).  A block's TX threads
# cover COL_ROW_BYTES (narrow, wide) of a row (all of a narrower one): wide where the
# wide strips alone give half the SMs one (8192x32000 softmax: f32 59% against 55%,
# f16 50% against 30%), else narrow, so that the stats split n into fewer chunks
# (32768x1024 stats: 74% against 61%).
COL_R = {4: (1, 4, 16), 2: (1, 4, 16), 8: (1, 4, 16)}
COL_SPLIT_MAX = 16

# Column slices that fill a cluster of COL_CLUSTER blocks (16-byte vectors, sm_90), each
# block staging 64 KB of a strip (its rows; COL_R[-1] vectors a thread), exchange their
# states through distributed shared memory and read the input once.  The strip is the
# widest of COL_CLUSTER_STRIP_BYTES whose cluster holds n (up to 8192 rows, with strips of
# 64 bytes), taken only where n leaves no block of the cluster without rows and rows are
# at least as wide as the strip.  H200 (session 12), softmax axis 0, us, before (three
# passes or mode 1) -> cluster: float32 8192x32000 792 -> 745, 8192x4096 121 -> 109,
# 4096x8192 115.5 -> 104.6, 2048x16384 116.3 -> 104.1; float64 8192x16000 1292 -> 1016,
# 4096x8192 339 -> 269.  16-bit types take it for more than 4096 rows since session 15
# (3 blocks an SM, see col_softmax_min_blocks): float16 8192x32000 470 -> 384, 8192x4096
# 94 -> 61.  Slower: strips of 16 or 32 bytes (2-3x), clusters with ranks left idle
# (5000 or 6000 rows of 1024-row shares: 20-35%), rows of 1024 (512-byte strips, 12%),
# and shares of the rows evened out over the ranks (a chunk end per block: 8192x32000
# 745 -> 792 us).
COL_CLUSTER = 8
COL_CLUSTER_STRIP_BYTES = (256, 128, 64)
COL_ROW_BYTES = (128, 512)

# col_normalize (columns against given states: the last pass of the three-pass route,
# and the streaming API): COL_NORM_R vectors a thread in registers; a block's threads
# cover COL_NORM_ROW_BYTES of a row (H200, softmax axis=0 f32 32768x1024 three-pass:
# 131.6 us with 4096 bytes against 138.9 us with 512 and 145.5 us for the staged pass
# of col_softmax before).
COL_NORM_R = 4
COL_NORM_ROW_BYTES = 4096
# col_normalize's grid, by itemsize: at most this many waves of resident blocks, each
# taking items in turn, so that a block whose items share their columns (a strip with
# more items than the grid has blocks) forms their normalisers once; None: a block an
# item.  (H200, softmax axis 0, us, a block an item / 2 waves: f16 32768x1024 80.0 /
# 75.4, bf16 85.1 / 80.8, f32 113.0 / 118.0, f64 256.0 / 243.8; bench/NOTES.md, session 25.)
COL_NORM_WAVES = {2: 2, 4: None, 8: 2}


def stats_epps(itemsize, vec, has_b):
    """Elements a thread of the stats kernels has in flight per pass, one instance each,
    the default first: 32 registers of them (16-bit ones packed two to a register in
    16-byte vectors), 16 elements with weights (held as floats).  16-bit vectors also
    have a row instance of 32 (shorter passes: see _cupy_backend._stats_epp; the columns
    keep 64)."""
    if itemsize == 8:
        return (8 if has_b else 16,)
    if has_b:
        return (16,)
    return (64, 32) if itemsize == 2 and vec > 1 else (32,)


def stats_unroll(itemsize, vec, has_b, epp=None):
    """Vectors in flight per thread and pass of a stats instance (default: the first)."""
    return (epp or stats_epps(itemsize, vec, has_b)[0]) // vec


def vec_width(itemsize):
    """Elements per 16-byte vector."""
    return 16 // itemsize


def _row_softmax_shapes(itemsize):
    """(threads, ept, xch, hold) of every row_softmax instance: xch 0 a block (or
    less) per row, 1 split rows exchanging through global memory (staged), >= 2 a
    cluster of xch blocks."""
    table = {(threads, ept, g if g > 1 else 0, hold)
             for _, threads, ept, _, g, hold in ROW_TABLE[itemsize]}
    split = {(threads, ept, 1, STAGED) for threads, ept in SPLIT_CHUNKS[itemsize]}
    return sorted(table | split)


def row_softmax_smem(itemsize, threads, ept, hold):
    """Dynamic shared memory (bytes) of a row_softmax instance: its staged chunk."""
    return threads * ept * itemsize if hold == STAGED else 0


def col_softmax_smem(itemsize, vec, r):
    return THREADS * r * vec * itemsize


def instances(dtype_name):
    """(macro, entry-point name, macro arguments) of every kernel of one dtype."""
    key, ctype, itemsize = DTYPES[dtype_name]
    out = []
    for vec in (vec_width(itemsize), 1):
        for threads, ept, xch, hold in _row_softmax_shapes(itemsize):
            if xch >= 2 and vec == 1:              # clusters only for 16-byte vectors
                continue
            minb = row_softmax_min_blocks(itemsize, vec, threads, ept, hold)
            cluster = f"CS_CLUSTER({xch})" if xch >= 2 else ""
            out.append(("CS_ROW_SOFTMAX", row_softmax_name(key, vec, threads, ept, xch, hold),
                        (ctype, vec, threads, ept, xch, HOLD_ENUM[hold], minb, cluster)))
        for has_b in (0, 1):
            for epp in stats_epps(itemsize, vec, has_b):
                out.append(("CS_ROW_STATS", row_stats_name(key, vec, has_b, epp),
                            (ctype, vec, THREADS, "true" if has_b else "false", epp,
                             stats_min_blocks(itemsize, vec, has_b))))
        for r in COL_R[itemsize]:
            minb = col_softmax_min_blocks(itemsize, vec, r)
            for xch in (0, COL_CLUSTER) if vec > 1 and r == COL_R[itemsize][-1] else (0,):
                cluster = f"CS_CLUSTER({xch})" if xch else ""
                out.append(("CS_COL_SOFTMAX", col_softmax_name(key, vec, r, xch),
                            (ctype, vec, THREADS, r, xch, minb, cluster)))
        out.append(("CS_COL_NORMALIZE", col_normalize_name(key, vec),
                    (ctype, vec, THREADS, COL_NORM_R, min_blocks(THREADS, 0, 64))))
        for has_b in (0, 1):
            epp = stats_epps(itemsize, vec, has_b)[0]
            out.append(("CS_COL_STATS", col_stats_name(key, vec, has_b, epp),
                        (ctype, vec, THREADS, "true" if has_b else "false", epp,
                         stats_min_blocks(itemsize, vec, has_b, cols=True))))
    out.append(("CS_MERGE_STATES", merge_states_name(key), (ctype, THREADS)))
    return out


SMEM_PER_SM = 227 * 1024   # usable shared memory per SM on sm_90 (sm_80: 163 KB)


def min_blocks(threads, smem, regs):
    """__launch_bounds__ minimum blocks per SM: as many as the shared memory allows,
    but at most as many as leave `regs` registers per thread."""
    return max(1, min(65536 // (threads * regs), SMEM_PER_SM // (smem + 1024)))


def row_softmax_min_blocks(itemsize, vec, threads, ept, hold):
    """Staged: 40 registers (1536 threads per SM); 64 for float64 and for scalar loads
    (which pass through registers on their way to shared memory).  In registers: 32 for
    float32 vectors of up to 8 elements a thread (a full SM), 48 up to 16 (ncu, session
    3: at 56 registers only 4 blocks of 256 fit and the rows of 128 and 4096 were
    occupancy-bound; 5 blocks at 48 registers matched 6 at 40, which spills), 64 up to
    32 registers of chunk, 128 beyond (64 halves, 16 doubles)."""
    if hold == STAGED:
        regs = 64 if itemsize == 8 or vec == 1 else 40
    else:
        words = ept * itemsize // 4
        if itemsize == 4 and vec > 1 and ept <= 16:
            regs = 32 if ept <= 8 else 48
        else:
            regs = 128 if words > 32 or (itemsize == 8 and ept >= 16) else 64
    return min_blocks(threads, row_softmax_smem(itemsize, threads, ept, hold), regs)


def col_softmax_min_blocks(itemsize, vec, r):
    """A thread keeps VEC column states: 80 registers (3 blocks of 64 KB an SM), 128 in
    float64.  16-bit vectors (8 columns) had 96 until session 15 (2 blocks an SM); at 80
    they need the packed column max and a partly unrolled sum pass not to spill (H200,
    us, 96 -> 80: float16 softmax axis 0 4096x8192 72.7 -> 60.4, 6000x8192 130.7 ->
    115.0; bfloat16 8192x32000 by the cluster route 503 -> 406)."""
    regs = 128 if itemsize == 8 else 80
    return min_blocks(THREADS, col_softmax_smem(itemsize, vec, r), regs)


def stats_min_blocks(itemsize, vec, has_b, cols=False):
    """row_stats: 64 registers (32 warps per SM) where that does not spill; 80 with
    weights and for scalar 16-bit loads.  col_stats 80: at 64 it ran slower (H200, session
    27, f16 logsumexp axis 0 32768x1024 34.3 -> 40.8 us, 262144x128 43.7 -> 60.4), while
    16-bit rows of 64 packed elements a pass gained from 80 to 64 (32768x1024 23.4 -> 21.8,
    65536x512 23.4 -> 21.8)."""
    if itemsize == 8:
        return 2
    if cols:
        return 3
    return 3 if has_b or (itemsize == 2 and vec == 1) else 4


def row_softmax_name(key, vec, threads, ept, xch, hold):
    return f"row_softmax_{key}_v{vec}_t{threads}_e{ept}_x{xch}{hold}"


def row_stats_name(key, vec, has_b, epp):
    return f"row_stats_{key}_v{vec}_b{int(has_b)}_e{epp}"


def col_softmax_name(key, vec, r, xch=0):
    return f"col_softmax_{key}_v{vec}_r{r}" + (f"_x{xch}" if xch else "")


def col_normalize_name(key, vec):
    return f"col_normalize_{key}_v{vec}"


def col_stats_name(key, vec, has_b, epp):
    return f"col_stats_{key}_v{vec}_b{int(has_b)}_e{epp}"


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
# Routes: the instance and launch shape that a problem takes, from the tables above.
# Plain Python, so that the rules are tested without CuPy; `tune` is
# _cupy_backend.TUNE as sorted items.

def pow2_at_least(v):
    v = max(1, int(v))
    return 1 << (v - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def row_entry(itemsize, n, clusters):
    for entry in ROW_TABLE[itemsize]:
        if n <= entry[0]:
            return entry if clusters or entry[4] == 1 else None
    return None


def row_tpr(entry, n):
    tpr, ept = entry[3], entry[2]
    return tpr if tpr else min(32, pow2_at_least(cdiv(n, ept)))


@functools.lru_cache(maxsize=4096)
def row_softmax_plan(itemsize, rows, n, nsm, split_ok, clusters, tune):
    """(threads, ept, tpr, G, xch, hold): G > 1 splits each row over G blocks (tpr ==
    threads); xch: the instance's exchange (0 none, 1 global memory, >= 2 a cluster of
    G == xch blocks).  split_ok False (normalise against a given state): no exchange."""
    tune = dict(tune)
    chunks = SPLIT_CHUNKS[itemsize]
    if "row_entry" in tune:                              # (threads, ept, xch), xch >= 1
        threads, ept, xch = tune["row_entry"]
        if xch >= 2 and n > threads * ept * xch:
            raise ValueError(f"row_entry {tune['row_entry']} does not cover n = {n}")
        return threads, ept, threads, (xch if xch >= 2 else cdiv(n, threads * ept)), xch, STAGED
    if "row_block" in tune:                              # (threads, ept, tpr, hold)
        threads, ept, tpr, hold = tune["row_block"]
        tpr = row_tpr((n, threads, ept, tpr), n)
        if n > tpr * ept:
            raise ValueError(f"row_block {tune['row_block']} does not cover n = {n}")
        return threads, ept, tpr, 1, 0, hold
    entry = row_entry(itemsize, n, clusters)
    # A row that one block holds stays that block's however few the rows are: the split
    # route's exchange costs more than the idle SMs (H200, 1-65 rows: f32 4096 6.9 ->
    # 5.1 us, f16 8192 7.0 -> 5.6).  Rows of a cluster that would leave SMs idle are split.
    few_rows = rows < nsm // 2 and n >= 4096
    if entry is not None and not (split_ok and few_rows and entry[4] > 1):
        max_n, threads, ept, tpr, g, hold = entry
        if g == 1:
            return threads, ept, row_tpr(entry, n), 1, 0, hold
        return threads, ept, threads, g, g, hold
    threads, ept = chunks[-1]
    if split_ok:
        for c in reversed(chunks):                       # largest chunk that fills the GPU
            if rows * cdiv(n, c[0] * c[1]) >= nsm:
                threads, ept = c
                break
        else:
            threads, ept = chunks[0]
    return threads, ept, threads, cdiv(n, threads * ept), 1, STAGED


@functools.lru_cache(maxsize=4096)
def row_stats_plan(itemsize, vec, has_b, epp, rows, n, nsm, slots, tune):
    """(tpr, G, CH) for the streaming row kernels: a (sub-)warp per short row, a block
    per long one; rows fewer than the blocks the GPU holds at once (slots) are split
    into G chunks so that every slot streams one."""
    per_thread = vec * stats_unroll(itemsize, vec, has_b, epp)     # elements per pass
    if n <= 8 * per_thread * 32 and rows >= 4 * nsm:
        # (sub-)warp per row: one pass per lane for short rows, a few for longer ones
        return min(32, pow2_at_least(cdiv(max(n, 1), per_thread))), 1, max(n, 1)
    tpr = THREADS
    per_pass = tpr * per_thread
    G = 1
    if rows < slots:
        G = max(1, min(cdiv(n, per_pass), slots // rows))
    G = dict(tune).get("stats_G", G)
    CH = max(1, cdiv(cdiv(n, G), tpr * vec)) * tpr * vec
    return tpr, max(1, cdiv(n, CH)), CH


@functools.lru_cache(maxsize=4096)
def col_stats_plan(itemsize, vec, has_b, epp, groups, n, ty, nsm, slots, tune):
    """(G, CH) for col_stats, whose blocks have ty threads along n: groups of columns
    fewer than the blocks the GPU holds at once (slots) are split into G chunks of at
    least two of the block's passes, no more chunks than slots (run 3's sweep).  The
    kernel deals the passes to the chunks, so the busiest SM streams about
    cdiv(groups * G, nsm) * cdiv(passes, G) of them: G minimises that, the largest G of
    a tie (more warps).  (H200, us, G filling the slots -> this G: logsumexp axis 0 f16
    32768x1024 35.8 -> 34.0 (G 24 -> 16), f32 262144x64 35.2 -> 31.7, f16 262144x128
    49.3 -> 43.9; softmax axis 0 f16 32768x1024 73.6 -> 71.8; bench/NOTES.md, session 26.)
    CH is the unit the kernel deals rows in: a pass, or n / G rows where that is less
    (a forced G)."""
    rows_per_pass = ty * stats_unroll(itemsize, vec, has_b, epp)
    passes = cdiv(n, rows_per_pass)
    G = 1
    if groups < slots:
        most = max(1, min(cdiv(passes, 2), slots // groups))
        G = min(range(1, most + 1), key=lambda g: (cdiv(groups * g, nsm) * cdiv(passes, g), -g))
    G = dict(tune).get("stats_G", G)
    CH = max(1, min(rows_per_pass, cdiv(n, G)))
    return max(1, min(G, cdiv(n, CH))), CH


def col_normalize_grid(itemsize, items, resident, tune):
    """Blocks of a col_normalize launch of `items` work items, `resident` of which the
    GPU holds at once."""
    waves = dict(tune).get("norm_waves", COL_NORM_WAVES[itemsize])
    return min(items, 1 << 30) if waves is None else min(items, max(1, int(waves * resident)))


def col_cluster_strip(itemsize, n, inner):
    """Bytes of a row that the column cluster route's strips cover: the widest strip
    whose cluster holds the slice, taken only where every block of the cluster gets rows
    and the rows are as wide as the strip; else None."""
    chunk_bytes = col_softmax_smem(itemsize, vec_width(itemsize), COL_R[itemsize][-1])
    for strip in COL_CLUSTER_STRIP_BYTES:
        rows = chunk_bytes // strip                     # a block's share of the strip
        if COL_CLUSTER * rows >= n:
            full = n > (COL_CLUSTER - 1) * rows and inner * itemsize >= strip
            return strip if full else None
    return None


# ---------------------------------------------------------------------------------
# CuPy side (imports CuPy lazily).

_modules = {}     # (device, dtype name) -> cupy.RawModule
_functions = {}   # (device, name) -> [cupy.cuda.function.Function, dynamic smem allowed]
_occupancy = {}   # (device, name, threads, smem) -> resident blocks on the device


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


def get_function(dtype_name, name, smem=0):
    """The compiled entry point ``name`` (a cupy.cuda.function.Function), allowed
    ``smem`` bytes of dynamic shared memory."""
    dev = _device()
    entry = _functions.get((dev, name))
    if entry is None:
        entry = [get_module(dtype_name).get_function(name).kernel, 48 * 1024]
        _functions[(dev, name)] = entry
    fn, allowed = entry
    if smem > allowed:                   # above 48 KB a kernel must opt in
        from cupy_backends.cuda.api import driver
        driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        entry[1] = smem
    return fn


def resident_blocks(fn, name, threads, smem=0):
    """Blocks of ``fn`` that fit on the whole device at once (cooperative launch limit)."""
    dev = _device()
    key = (dev, name, threads, smem)
    v = _occupancy.get(key)
    if v is None:
        from cupy_backends.cuda.api import driver
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, threads, smem)
        v = per_sm * sm_count()
        _occupancy[key] = v
    return v


@functools.lru_cache(maxsize=None)
def _sm_count(dev):
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"]


def sm_count():
    return _sm_count(_device())


@functools.lru_cache(maxsize=None)
def _compute_capability(dev):
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(dev)
    return props["major"], props["minor"]


def has_wgmma():
    """Hopper's warpgroup MMA: code built for sm_90a runs on compute capability 9.0 only."""
    return _compute_capability(_device()) == (9, 0)


def arch_module(source, arch):
    """``source`` compiled by NVRTC for ``arch`` (e.g. "sm_90a") as a cupy.RawModule.

    CuPy's own path appends the device's plain ``-arch=sm_XX`` and NVRTC refuses a second
    one, so arch-specific targets (wgmma needs sm_90a) are compiled here, with the same
    options, and the cubin is kept in CuPy's cache directory under a hash of the source,
    the options and the NVRTC version."""
    import os
    import tempfile
    import cupy
    from cupy_backends.cuda.libs import nvrtc
    options = compile_options() + (f"-arch={arch}", "--device-as-default-execution-space")
    key = hashlib.sha256("\0".join((source,) + options + (str(nvrtc.getVersion()),)).encode())
    cache = os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))
    path = os.path.join(cache, f"cupy_softmax_{arch}_{key.hexdigest()[:32]}.cubin")
    if not os.path.exists(path):
        prog = nvrtc.createProgram(source, "cupy_softmax.cu", [], [])
        try:
            try:
                nvrtc.compileProgram(prog, list(options))
            except nvrtc.NVRTCError as exc:
                raise RuntimeError(f"NVRTC could not compile for {arch}:\n"
                                   f"{nvrtc.getProgramLog(prog)}") from exc
            cubin = nvrtc.getCUBIN(prog)
        finally:
            nvrtc.destroyProgram(prog)
        os.makedirs(cache, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(cubin)
        os.replace(tmp, path)             # atomic: concurrent processes see whole files
    return cupy.RawModule(path=path)



@functools.lru_cache(maxsize=None)
def _has_clusters(dev):
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(dev)["major"] >= 9


_no_clusters = set()   # devices where a cluster launch failed


def has_clusters():
    """Thread-block clusters (compute capability 9.0 and later)."""
    dev = _device()
    return dev not in _no_clusters and _has_clusters(dev)


def disable_clusters():
    _no_clusters.add(_device())


class _LaunchConfig(ctypes.Structure):     # CUlaunchConfig of the driver API
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem_bytes", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.c_void_p), ("num_attrs", ctypes.c_uint)]


_clusters_fit = {}


def max_active_clusters(fn, name, threads, smem, cluster):
    """Clusters of ``fn`` (compiled with __cluster_dims__ ``cluster``) that the device runs
    at once (cuOccupancyMaxActiveClusters; CuPy does not wrap it); 0 if the query fails."""
    key = (_device(), name, threads, smem)
    v = _clusters_fit.get(key)
    if v is None:
        cfg = _LaunchConfig((ctypes.c_uint * 3)(*cluster), (ctypes.c_uint * 3)(threads, 1, 1),
                            smem, None, None, 0)
        out = ctypes.c_int(0)
        try:
            rc = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveClusters(
                ctypes.byref(out), ctypes.c_void_p(fn.kernel.ptr), ctypes.byref(cfg))
        except (OSError, AttributeError):
            rc = -1
        v = out.value if rc == 0 else 0
        _clusters_fit[key] = v
    return v


def compile_all(dtype_names=tuple(DTYPES)):
    """Compile (or load from CuPy's cache) every module; seconds per dtype."""
    import time
    times = {}
    for d in dtype_names:
        t = time.perf_counter()
        get_module(d)
        times[d] = time.perf_counter() - t
    return times
