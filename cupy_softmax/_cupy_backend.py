"""CuPy backend: launches the kernels of kernels_cu/ on canonical 3-d views.

The front end hands every function a view ``x3`` of shape (outer, n, inner), reduced
over n, with any element strides (never written), and C-contiguous outputs that it
allocated.  Which kernel and tile shape runs is decided here, from the size tables
and route rules in ``_kernels.py``:

* inner == 1 (rows): ``row_softmax`` holds a row (or a chunk of it) in registers or
  staged in shared memory; rows longer than one block's chunk are split over a
  cluster of G blocks (sm_90; both from ``K.ROW_TABLE``), or, for rows past the
  table, rows of a cluster that would leave SMs idle, rows without 16-byte vectors and
  GPUs without clusters, over G blocks that exchange partial states through global
  memory (cooperative launch, mode 1).  Past what the GPU can hold at once: state
  (``row_stats``), then normalise (mode 2).  Contiguous rows of any length move in
  16-byte vectors (``_row_vec``).
* inner > 1 (columns): ``col_softmax`` reads W consecutive columns coalesced and
  walks n, split over G blocks in the same way when n is a few blocks long (a
  cluster of ``K.COL_CLUSTER`` blocks where the slice fills one), and
  state (``col_stats``) then normalise (``col_normalize``) beyond
  (``K.COL_SPLIT_MAX``).
* logsumexp / partial_state stream the input once (``row_stats`` / ``col_stats``);
  few long slices are split into chunks whose states the last block merges.
* merge_states / state_logsumexp: ``merge_states`` over stacked states.

All launches go to CuPy's current stream.
"""

import warnings

import cupy

from . import _kernels as K

# Overrides of the size table, for benchmarks (bench/bench_gpu.py --sweep) and tests:
#   "row_entry": (threads, ept, xch) of a row_softmax instance with xch >= 1, forces
#       split rows with it (xch 1: SPLIT_CHUNKS, global exchange; >= 2: a cluster);
#   "row_block": (threads, ept, tpr, hold) of an unsplit row_softmax instance (tpr 0:
#       auto);
#   "three_pass": True forces state-then-normalise;
#   "col_R": rows per thread of col_softmax (one of COL_R); "stats_G": chunks per slice;
#   "stats_epp": elements a thread per pass of row_stats (one of K.stats_epps);
#   "col_row_bytes": bytes of a row that a column block's TX threads cover;
#   "norm_row_bytes": the same for col_normalize (K.COL_NORM_ROW_BYTES);
#   "norm_waves": col_normalize's grid in waves of resident blocks (K.COL_NORM_WAVES;
#       None: a block an item);
#   "col_cluster_strip": row bytes of the column cluster route's strips (0: not taken).
TUNE = {}


# ---------------------------------------------------------------------------------
# helpers

def _dtype_name(dtype):
    name = dtype.name
    if name not in K.DTYPES:
        raise TypeError(f"cupy_softmax kernels do not support dtype {dtype}")
    return name


def _acc_dtype(dtype):
    return cupy.float64 if dtype.itemsize == 8 else cupy.float32


def _estrides(a):
    isz = a.itemsize
    return tuple(s // isz for s in a.strides)


def _ptr(a):
    return 0 if a is None else a


def _launch(dname, name, grid, threads, args, coop=False, smem=0):
    fn = K.get_function(dname, name, smem)
    if coop:
        fn((grid,), (threads,), args, shared_mem=smem, enable_cooperative_groups=True)
    else:
        fn((grid,), (threads,), args, shared_mem=smem)


def _resident(dname, name, threads, smem=0):
    return K.resident_blocks(K.get_function(dname, name, smem), name, threads, smem)


_counter_bufs = {}   # (device, stream) -> zeroed uint32 counters, kept zero by the kernels


def _counters(n):
    """A buffer of >= n zero counters for kernels on the current stream.

    Split kernels count their blocks in and the last one sets its counters back to
    zero, so the buffer is zero again whenever the stream reaches the next launch:
    no memset per call."""
    key = (K._device(), cupy.cuda.get_current_stream().ptr)
    buf = _counter_bufs.get(key)
    if buf is None or buf.size < n:
        buf = cupy.zeros(max(n, 4096), cupy.uint32)
        _counter_bufs[key] = buf
    return buf


def _aligned(a, *elem_strides):
    """16-byte aligned base and every given element stride a multiple of 16 bytes."""
    if a.data.ptr % 16:
        return False
    return all((s * a.itemsize) % 16 == 0 for s in elem_strides)


# ---------------------------------------------------------------------------------
# rows (inner == 1)

def _row_vec(x3, out3=None):
    """(vec, span) of the row kernels.  16-byte vectors where the rows are contiguous and
    (with an output) every row starts as far from a 16-byte boundary as its output row:
    the kernels read and write a row in vectors from the boundary at or below its start,
    masking the slots outside it.  span: the slots a row may cover, n where every row
    starts on a boundary, else n + vec - 1 (the size table's choice is made for span)."""
    rows, n, _ = x3.shape
    xs0, xs1, _ = _estrides(x3)
    isz = x3.itemsize
    vec = K.vec_width(isz)
    if xs1 != 1 or x3.data.ptr % isz:
        return 1, n
    if out3 is not None and ((x3.data.ptr - out3.data.ptr) % 16
                             or rows > 1 and (xs0 - n) * isz % 16):
        return 1, n
    return vec, n if _aligned(x3, *((xs0,) if rows > 1 else ())) else n + vec - 1


def _tune_key():
    return tuple(sorted(TUNE.items()))


def _row_softmax(x3, out3, log, st_m=None, st_s=None):
    """Softmax over rows; with st_m/st_s, normalise against that state (mode 2)."""
    rows, n, _ = x3.shape
    dname = _dtype_name(x3.dtype)
    isz = x3.itemsize
    xs0, xs1, _ = _estrides(x3)
    nsm = K.sm_count()
    vec, span = _row_vec(x3, out3)
    external = st_m is not None
    threads, ept, tpr, G, xch, hold = K.row_softmax_plan(
        isz, rows, span, nsm, not external, vec > 1 and K.has_clusters(), _tune_key())
    if xch >= 2 and vec == 1:                            # a forced row_entry (tests)
        raise ValueError("cluster instances need 16-byte vectors")
    name = K.row_softmax_name(DTYPE_KEY[dname], vec, threads, ept, xch, hold)
    smem = K.row_softmax_smem(isz, threads, ept, hold)
    items = rows * G if tpr == threads else K.cdiv(rows, threads // tpr)
    if external:
        args = (x3, xs0, xs1, out3, rows, n, tpr, G, 2, int(log), st_m, st_s, 0)
        _launch(dname, name, items, threads, args, smem=smem)
        return
    if G == 1:
        args = (x3, xs0, xs1, out3, rows, n, tpr, 1, 0, int(log), 0, 0, 0)
        _launch(dname, name, items, threads, args, smem=smem)
        return
    if xch >= 2:                                         # a cluster of G blocks per row
        args = (x3, xs0, xs1, out3, rows, n, tpr, G, 1, int(log), 0, 0, 0)
        try:
            _launch(dname, name, items, threads, args, smem=smem)
        except cupy.cuda.driver.CUDADriverError as exc:  # a launch error is not sticky
            K.disable_clusters()
            warnings.warn(f"cupy_softmax: cluster launch failed ({exc}); split rows now "
                          "exchange through global memory", stacklevel=3)
            _row_softmax(x3, out3, log)
        return
    resident = _resident(dname, name, threads, smem)
    if G <= resident and not TUNE.get("three_pass"):
        acc = _acc_dtype(x3.dtype)
        ws_m = cupy.empty(items, acc)
        ws_s = cupy.empty(items, acc)
        args = (x3, xs0, xs1, out3, rows, n, tpr, G, 1, int(log), ws_m, ws_s, _counters(2 * rows))
        _launch(dname, name, min(items, resident // G * G), threads, args, coop=True, smem=smem)
        return
    # Too long to hold on the GPU at once: state, then normalise (reads the input twice).
    acc = _acc_dtype(x3.dtype)
    m = cupy.empty(rows, acc)
    s = cupy.empty(rows, acc)
    _row_stats(x3, None, rows, n, out_kind=0, om=m, os=s)
    _row_softmax(x3, out3, log, m, s)


def _stats_epp(itemsize, vec, has_b, n):
    """Elements a thread of row_stats has in flight per pass (which instance): the
    default, but for 16-bit rows that a group of 8 to 32 lanes does not cover in one
    pass of it, 32 (H200, float16 logsumexp, both instances at 4 blocks an SM, 64 -> 32
    elements: 4096x4096 14.9 -> 14.3 us, 128x131072 16.5 -> 15.9, 65536x128 11.2 ->
    10.3, 1x262144 7.3 -> 6.9; the other way 4x1048576 10.2 -> 10.5, 2048x8192 14.5 ->
    15.2)."""
    epps = K.stats_epps(itemsize, vec, has_b)
    if TUNE.get("stats_epp") in epps:
        return TUNE["stats_epp"]
    return epps[1] if len(epps) > 1 and not 8 * epps[0] <= n <= 32 * epps[0] else epps[0]


def _row_stats(x3, b3, rows, n, out_kind, om=None, os=None, ov=None, osign=None):
    """State (out_kind 0: om, os) or logsumexp (1: ov, osign) of every row."""
    dname = _dtype_name(x3.dtype)
    isz = x3.itemsize
    xs0, xs1, _ = _estrides(x3)
    vec, span = _row_vec(x3)
    has_b = b3 is not None
    epp = _stats_epp(isz, vec, has_b, span)
    name = K.row_stats_name(DTYPE_KEY[dname], vec, has_b, epp)
    slots = _resident(dname, name, K.THREADS)
    tpr, G, CH = K.row_stats_plan(isz, vec, has_b, epp, rows, span, K.sm_count(), slots, _tune_key())
    bs0, bs1 = _estrides(b3)[:2] if has_b else (0, 0)
    items = rows * G if tpr == K.THREADS else K.cdiv(rows, K.THREADS // tpr)
    wm = ws = cnt = 0
    if G > 1:
        acc = _acc_dtype(x3.dtype)
        wm, ws, cnt = cupy.empty(G * rows, acc), cupy.empty(G * rows, acc), _counters(rows)
    args = (x3, xs0, xs1, _ptr(b3), bs0, bs1, rows, n, tpr, G, CH, out_kind,
            _ptr(om), _ptr(os), _ptr(ov), _ptr(osign), wm, ws, cnt)
    _launch(dname, name, items, K.THREADS, args)


# ---------------------------------------------------------------------------------
# columns (inner > 1)

def _col_layout(x3, itemsize, out3=None, row_bytes=None):
    """(vec, txlog): vectors along inner where contiguous and aligned; TX threads
    cover row_bytes of a row (or all of a narrow one), by default K.COL_ROW_BYTES: the
    wide ones where their strips alone give half the SMs one."""
    outer, n, inner = x3.shape
    xs0, xs1, xs2 = _estrides(x3)
    v = K.vec_width(itemsize)
    strides = (xs0,) * (outer > 1) + (xs1,) * (n > 1)
    vec_ok = xs2 == 1 and inner % v == 0 and _aligned(x3, *strides) \
        and (out3 is None or out3.data.ptr % 16 == 0)
    vec = v if vec_ok else 1
    narrow, wide = K.COL_ROW_BYTES
    row_bytes = row_bytes or TUNE.get("col_row_bytes") or \
        (wide if 2 * outer * K.cdiv(inner * itemsize, wide) >= K.sm_count() else narrow)
    tx = min(K.pow2_at_least(K.cdiv(inner, vec)), max(1, row_bytes // (vec * itemsize)))
    return vec, tx.bit_length() - 1


def _col_softmax_cluster(x3, out3, log, strip):
    """One read: the COL_CLUSTER blocks of a cluster share each strip's rows."""
    outer, n, inner = x3.shape
    dname = _dtype_name(x3.dtype)
    isz = x3.itemsize
    vec, txlog = _col_layout(x3, isz, out3, strip)
    R, G = K.COL_R[isz][-1], K.COL_CLUSTER
    name = K.col_softmax_name(DTYPE_KEY[dname], vec, R, G)
    args = (x3, *_estrides(x3), out3, outer, n, inner, txlog, G, int(log), 0, 0, 0)
    try:
        _launch(dname, name, outer * K.cdiv(inner, vec << txlog) * G, K.THREADS, args,
                smem=K.col_softmax_smem(isz, vec, R))
    except cupy.cuda.driver.CUDADriverError as exc:     # a launch error is not sticky
        K.disable_clusters()
        warnings.warn(f"cupy_softmax: cluster launch failed ({exc}); columns split over "
                      "blocks now exchange through global memory", stacklevel=4)
        _col_softmax(x3, out3, log)


def _col_softmax(x3, out3, log):
    outer, n, inner = x3.shape
    dname = _dtype_name(x3.dtype)
    isz = x3.itemsize
    xs0, xs1, xs2 = _estrides(x3)
    vec, txlog = _col_layout(x3, isz, out3)
    strip = TUNE.get("col_cluster_strip", K.col_cluster_strip(isz, n, inner))
    if vec > 1 and strip and K.has_clusters() and not TUNE.get("three_pass"):
        _col_softmax_cluster(x3, out3, log, strip)
        return
    TX = 1 << txlog
    TY = K.THREADS // TX
    rs = K.COL_R[isz]
    R = next((r for r in rs if TY * r >= n), rs[-1])
    R = TUNE.get("col_R", R)
    G = K.cdiv(n, TY * R)
    strips = K.cdiv(inner, TX * vec)
    groups = outer * strips
    items = groups * G
    name = K.col_softmax_name(DTYPE_KEY[dname], vec, R)
    smem = K.col_softmax_smem(isz, vec, R)
    if G == 1:
        args = (x3, xs0, xs1, xs2, out3, outer, n, inner, txlog, 1, int(log), 0, 0, 0)
        _launch(dname, name, items, K.THREADS, args, smem=smem)
        return
    resident = _resident(dname, name, K.THREADS, smem)
    if G > min(resident, K.COL_SPLIT_MAX) or TUNE.get("three_pass"):
        acc = _acc_dtype(x3.dtype)
        m, s = cupy.empty((outer, inner), acc), cupy.empty((outer, inner), acc)
        _col_stats(x3, None, 0, m, s, None, None)
        _col_normalize(x3, out3, log, m, s)
        return
    # whole slices per round of the persistent grid: no slice waits on a block that is
    # still busy with an earlier slice
    acc = _acc_dtype(x3.dtype)
    W = TX * vec
    ws_m = cupy.empty(items * W, acc)
    ws_s = cupy.empty(items * W, acc)
    args = (x3, xs0, xs1, xs2, out3, outer, n, inner, txlog, G, int(log), ws_m, ws_s,
            _counters(2 * groups))
    _launch(dname, name, min(items, resident // G * G), K.THREADS, args, coop=True, smem=smem)


def _col_normalize(x3, out3, log, m, s):
    """softmax / log_softmax of x3 against the states m, s (outer, inner) of its columns."""
    outer, n, inner = x3.shape
    dname = _dtype_name(x3.dtype)
    vec, txlog = _col_layout(x3, x3.itemsize, out3,
                             TUNE.get("norm_row_bytes", K.COL_NORM_ROW_BYTES))
    items = outer * K.cdiv(inner, vec << txlog) * K.cdiv(n, (K.THREADS >> txlog) * K.COL_NORM_R)
    args = (x3, *_estrides(x3), out3, outer, n, inner, txlog, int(log), m, s)
    name = K.col_normalize_name(DTYPE_KEY[dname], vec)
    grid = K.col_normalize_grid(x3.itemsize, items, _resident(dname, name, K.THREADS), _tune_key())
    _launch(dname, name, grid, K.THREADS, args)


def _col_stats(x3, b3, out_kind, om, os, ov, osign):
    outer, n, inner = x3.shape
    dname = _dtype_name(x3.dtype)
    isz = x3.itemsize
    xs = _estrides(x3)
    vec, txlog = _col_layout(x3, isz)
    TX = 1 << txlog
    TY = K.THREADS // TX
    groups = outer * K.cdiv(inner, TX * vec)
    has_b = b3 is not None
    epp = K.stats_epps(isz, vec, has_b)[0]
    name = K.col_stats_name(DTYPE_KEY[dname], vec, has_b, epp)
    slots = _resident(dname, name, K.THREADS)
    G, CH = K.col_stats_plan(isz, vec, has_b, epp, groups, n, TY, K.sm_count(), slots,
                              _tune_key())
    bs = _estrides(b3) if has_b else (0, 0, 0)
    wm = ws = cnt = 0
    if G > 1:
        acc = _acc_dtype(x3.dtype)
        P = outer * inner
        wm, ws, cnt = cupy.empty(G * P, acc), cupy.empty(G * P, acc), _counters(groups)
    args = (x3, *xs, _ptr(b3), *bs, outer, n, inner, txlog, G, CH, out_kind,
            _ptr(om), _ptr(os), _ptr(ov), _ptr(osign), wm, ws, cnt)
    _launch(dname, name, groups * G, K.THREADS, args)


# ---------------------------------------------------------------------------------
# merge

def _merge(dname, pm, ps, k, P, out_kind, om, os, ov, osign):
    """Merge (k, P) states into P states (out_kind 0) or logsumexps in dname (1)."""
    lanes_log = 5 if k >= 8 else 0
    per_block = K.THREADS >> lanes_log
    grid = min(K.cdiv(P, per_block), 65536)
    args = (pm, ps, k, P, lanes_log, out_kind, _ptr(om), _ptr(os), _ptr(ov), _ptr(osign))
    _launch(dname, K.merge_states_name(DTYPE_KEY[dname]), grid, K.THREADS, args)


DTYPE_KEY = {name: spec[0] for name, spec in K.DTYPES.items()}


# ---------------------------------------------------------------------------------
# the interface the front end calls

def softmax(x3, out3, log):
    """softmax (log=False) or log_softmax of x3 along axis 1 into out3."""
    outer, n, inner = x3.shape
    if out3.size == 0:
        return
    if inner == 1:
        _row_softmax(x3, out3, bool(log))
    else:
        _col_softmax(x3, out3, bool(log))


def logsumexp(x3, b3, out, sign):
    """log|sum b exp(x)| along axis 1 into out (outer, inner); sign like out or None
    (then out is NaN where the weighted sum is negative)."""
    outer, n, inner = x3.shape
    if out.size == 0:
        return
    if inner == 1:
        _row_stats(x3, b3, outer, n, 1, None, None, out, sign)
    else:
        _col_stats(x3, b3, 1, None, None, out, sign)


def partial_state(x3, b3, m, s):
    """State (m, s) of every slice x3[o, :, i] into m, s (outer, inner), acc dtype."""
    outer, n, inner = x3.shape
    if m.size == 0:
        return
    if inner == 1:
        _row_stats(x3, b3, outer, n, 0, m, s, None, None)
    else:
        _col_stats(x3, b3, 0, m, s, None, None)


def _as_state_dtype(*arrays):
    """The kernels keep states in float32 or float64: the common one of ``arrays``."""
    dt = cupy.result_type(*arrays)
    return cupy.dtype(cupy.float64) if dt == cupy.float64 else cupy.dtype(cupy.float32)


def merge_states(m_parts, s_parts, m, s):
    """Merge (k, P) states into (P,) states."""
    k, P = m_parts.shape
    if P == 0:
        return
    dt = _as_state_dtype(m_parts, s_parts, m, s)
    if all(a.dtype == dt for a in (m_parts, s_parts, m, s)):
        _merge(dt.name, cupy.ascontiguousarray(m_parts), cupy.ascontiguousarray(s_parts),
               k, P, 0, m, s, None, None)
        return
    mt, st = cupy.empty(P, dt), cupy.empty(P, dt)
    _merge(dt.name, cupy.ascontiguousarray(m_parts, dt), cupy.ascontiguousarray(s_parts, dt),
           k, P, 0, mt, st, None, None)
    m[...] = mt
    s[...] = st


def state_logsumexp(m, s, out, sign):
    """logsumexp (and sign) of (P,) states; out, sign in the acc dtype."""
    P = m.size
    if P == 0:
        return
    dt = _as_state_dtype(m, s)
    m = cupy.ascontiguousarray(m, dt)
    s = cupy.ascontiguousarray(s, dt)
    if out.dtype == dt and (sign is None or sign.dtype == dt):
        _merge(dt.name, m, s, 1, P, 1, None, None, out, sign)
        return
    ot = cupy.empty(P, dt)
    gt = None if sign is None else cupy.empty(P, dt)
    _merge(dt.name, m, s, 1, P, 1, None, None, ot, gt)
    out[...] = ot.reshape(out.shape)
    if sign is not None:
        sign[...] = gt.reshape(sign.shape)


def normalize(x3, m, s, out3, log):
    """softmax / log_softmax of x3 against the given state (m, s) of shape (outer, inner)."""
    outer, n, inner = x3.shape
    if out3.size == 0:
        return
    acc = cupy.dtype(_acc_dtype(x3.dtype))
    if m.dtype != acc or s.dtype != acc:
        if cupy.float64 in (m.dtype, s.dtype) and acc != cupy.float64:
            # a float64 state and narrower data: compute in float64, round once
            tmp = cupy.empty(x3.shape, cupy.float64)
            normalize(x3.astype(cupy.float64), m, s, tmp, log)
            out3[...] = tmp
            return
        m, s = m.astype(acc), s.astype(acc)
    m = cupy.ascontiguousarray(m)
    s = cupy.ascontiguousarray(s)
    if inner == 1:
        _row_softmax(x3, out3, bool(log), m, s)
    else:
        _col_normalize(x3, out3, bool(log), m, s)
