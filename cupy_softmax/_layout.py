"""Axis handling and the canonical (outer, n, inner) layout.

Every reduction, whatever its axes, runs on a 3-d array whose middle extent
``n`` is the reduced one.  Adjacent reduced axes of any array become that
middle extent by a reshape (a view for contiguous input); reduced axes that are
not adjacent are first moved to the end, which costs one copy.
"""

import operator
from math import prod

import numpy as np


def normalize_axes(axis, ndim):
    """``axis`` (None, int or tuple of ints) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    normalized = []
    for ax in axes:
        ax = operator.index(ax)
        if not -ndim <= ax < ndim:
            raise np.exceptions.AxisError(ax, ndim)
        normalized.append(ax % ndim)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"duplicate value in 'axis': {axis!r}")
    return tuple(sorted(normalized))


class Canonical:
    """``x`` seen as (outer, n, inner), and the way back to ``x``'s shape."""

    def __init__(self, x, axes):
        self.shape = x.shape
        self.axes = axes
        kept = tuple(ax for ax in range(x.ndim) if ax not in axes)
        self.kept_shape = tuple(x.shape[ax] for ax in kept)
        self.n = prod(x.shape[ax] for ax in axes)
        adjacent = not axes or axes == tuple(range(axes[0], axes[-1] + 1))
        if adjacent:
            self.perm = None
            first = axes[0] if axes else x.ndim
            self.outer = prod(x.shape[:first])
            self.inner = prod(x.shape[first + len(axes):])
            self.x3 = x.reshape(self.outer, self.n, self.inner)
        else:
            self.perm = kept + axes
            self.outer = prod(self.kept_shape)
            self.inner = 1
            self.x3 = x.transpose(self.perm).reshape(self.outer, self.n, 1)

    def view3(self, y):
        """Another array of ``x``'s shape (``b``, say) in the same layout."""
        if self.perm is None:
            return y.reshape(self.outer, self.n, self.inner)
        return y.transpose(self.perm).reshape(self.outer, self.n, 1)

    def restore(self, out3, xp):
        """An (outer, n, inner) result back in ``x``'s shape, C-contiguous."""
        if self.perm is None:
            return out3.reshape(self.shape)
        moved = out3.reshape(tuple(self.shape[ax] for ax in self.perm))
        return xp.ascontiguousarray(moved.transpose(tuple(np.argsort(self.perm).tolist())))

    def reduced_shape(self, keepdims):
        if keepdims:
            return tuple(1 if ax in self.axes else size for ax, size in enumerate(self.shape))
        return self.kept_shape
