"""The online-normalizer state (m, s) and its merge: the library's one algebra.

A set of values ``a_i`` with weights ``b_i`` (``b_i = 1`` when unweighted) is
summarised by

    m = max{a_i : b_i != 0}                  (-inf for an empty set)
    s = sum_i b_i * exp(a_i - shift(m))      shift(m) = m if m is finite, else 0

(Milakov and Gimelshein, 2018).  Two states merge exactly:

    m = max(m1, m2)
    s = s1 * rescale(m1, m) + s2 * rescale(m2, m)
    rescale(mi, m) = exp(mi - m)         if m is finite
                     exp(shift(mi))      otherwise

The shift by 0 for non-finite maxima is what makes every edge case fall out of
IEEE arithmetic the way ``scipy.special`` reports it:

* all inputs -inf (or masked, or none): m = -inf, s = 0, so log(s) = -inf;
* some input +inf: s is the plain sum of ``b * exp(a)``, i.e. +inf, -inf for
  negative weights, NaN where they cancel;
* a NaN input makes s NaN, and NaN survives every merge and finaliser.

The finalisers turn a state into each public result:

    logsumexp       = shift(m) + log|s|        (sign = sign(s))
    softmax(x)      = exp(x - shift(m)) * inv,  inv = 1/s if m is finite, else NaN
    log_softmax(x)  = (x - shift(m)) - log(s)

The same rules, written once more in CUDA, live in ``kernels_cu/online_softmax.cuh``;
this module is the NumPy side and is generic over the array namespace ``xp``.
For complex input, m is taken over the real parts and s is complex.
"""

import numpy as np


def _real(x, xp):
    return xp.real(x) if xp.iscomplexobj(x) else x


def shift(m, xp=np):
    """The value subtracted before exponentiating: m where finite, else 0."""
    return xp.where(xp.isfinite(m), m, 0)


def scaled(s, factor, xp=np):
    """``s * factor`` for a real factor; complex ``s`` is scaled part by part, so that
    inf + 0j times 1 stays inf + 0j (as a complex product it would be inf + nanj)."""
    if not xp.iscomplexobj(s):
        return s * factor
    out = (s.real * factor).astype(s.dtype)
    out.imag = s.imag * factor
    return out


def rescale(m_part, m, xp=np):
    """Factor that moves a part's sum, taken at max ``m_part``, to max ``m``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return xp.where(xp.isfinite(m), xp.exp(m_part - m), xp.exp(shift(m_part, xp)))


def block_state(x, axis, b=None, xp=np, terms=None, sum_dtype=None):
    """State of the values of ``x`` along ``axis`` (a tuple), kept as size-1 dims.

    ``x`` is already in the accumulation dtype.  Elements with ``b == 0`` are
    masked out, even where ``x`` is inf or NaN.  Unweighted, the terms
    ``exp(x - shift(m))`` can be left in ``terms`` (an array shaped like ``x``),
    where softmax finds its output up to a factor.  ``sum_dtype`` widens the
    sum where it runs along a strided axis, which NumPy adds one by one rather
    than pairwise.
    """
    if b is not None:
        x = xp.where(b == 0, -xp.inf, x)
    with np.errstate(invalid="ignore", over="ignore"):
        m = xp.max(_real(x, xp), axis=axis, keepdims=True)
        terms = xp.subtract(x, shift(m, xp), out=terms)
        xp.exp(terms, out=terms)
        if b is not None:
            terms *= b
        s = xp.sum(terms, axis=axis, keepdims=True, dtype=sum_dtype).astype(terms.dtype, copy=False)
    return m, s


def merge(m, s, axis=0, xp=np):
    """Merge states stacked along ``axis`` into one (that axis is removed)."""
    with np.errstate(invalid="ignore"):
        m_all = xp.max(m, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        s_all = xp.sum(scaled(s, rescale(m, m_all, xp), xp), axis=axis)
    return xp.squeeze(m_all, axis=axis), s_all


def merge_pair(m1, s1, m2, s2, xp=np):
    """Merge two states of equal shape."""
    with np.errstate(invalid="ignore"):
        m = xp.maximum(m1, m2)
    with np.errstate(invalid="ignore", over="ignore"):
        s = scaled(s1, rescale(m1, m, xp), xp) + scaled(s2, rescale(m2, m, xp), xp)
    return m, s


def logsumexp_of(m, s, return_sign, xp=np):
    """(log|sum b exp(a)|, sign) of a state; without return_sign, NaN where negative."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if xp.iscomplexobj(s):
            # A NaN in the slice makes m NaN, but the sum may also hold an overflowed
            # term (exp of an unshifted complex64 value), and |NaN + inf j| is inf.
            s = xp.where(xp.isnan(m), xp.nan, s)
            if return_sign:
                magnitude = xp.abs(s)
                sign = xp.where(magnitude == 0, 0, s / xp.where(magnitude == 0, 1, magnitude))
                return shift(m, xp) + xp.log(magnitude), sign
            out = shift(m, xp) + xp.log(s)
            # Rounding can leave the phase at -pi; the principal value lies in (-pi, pi].
            return xp.where(out.imag == -np.pi, out.real + np.pi * 1j, out), None
        out = shift(m, xp) + xp.log(xp.abs(s))
        if return_sign:
            return out, xp.sign(s)
        return xp.where(s < 0, xp.nan, out), None


def softmax_inverse_norm(m, s, xp=np):
    """1/s where the max is finite; NaN otherwise (a +inf, NaN or all -inf slice)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.where(xp.isfinite(m), 1 / s, xp.nan)


def log_norm(s, xp=np):
    """log(s), the term log_softmax subtracts after the shift."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.log(s)


def softmax_block_factor(m_block, m, s, xp=np):
    """Turns ``exp(x - shift(m_block))`` of one block into softmax against (m, s)."""
    return rescale(m_block, m, xp) * softmax_inverse_norm(m, s, xp)


def log_softmax_block_offset(m_block, m, s, xp=np):
    """Subtracted from ``x - shift(m_block)`` of one block, it gives log_softmax."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (shift(m, xp) - shift(m_block, xp)) + log_norm(s, xp)
