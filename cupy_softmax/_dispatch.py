"""The one place that decides where work runs, from the type of the inputs."""

import sys

import numpy as np

from . import _numpy_backend


def _cupy_ndarray_type():
    cupy = sys.modules.get("cupy")
    return None if cupy is None else cupy.ndarray


def holds_dask(*values):
    """Whether any value, or any field of a state among them, is a Dask array."""
    dask_array = sys.modules.get("dask.array")
    if dask_array is None:
        return False
    return any(isinstance(v, dask_array.Array) or
               (isinstance(v, tuple) and any(isinstance(f, dask_array.Array) for f in v))
               for v in values)


def _is_foreign_array(x):
    return any(hasattr(x, attr) for attr in
               ("__array_namespace__", "__dlpack__", "__cuda_array_interface__", "__array__"))


def namespace(*arrays):
    """(xp, backend) for the given inputs (``None`` entries are ignored).

    CuPy arrays run the CUDA kernels; NumPy arrays, array-likes and scalars
    run the blocked NumPy path.  Other array types, and NumPy mixed with CuPy,
    raise TypeError.
    """
    cupy_type = _cupy_ndarray_type()
    kinds = set()
    for x in arrays:
        if x is None:
            continue
        if cupy_type is not None and isinstance(x, cupy_type):
            kinds.add("cupy")
        elif isinstance(x, (np.ndarray, np.generic)):
            kinds.add("numpy")
        elif _is_foreign_array(x):
            raise TypeError(
                f"cupy_softmax supports NumPy and CuPy arrays, not {type(x).__module__}."
                f"{type(x).__qualname__}")
    if kinds == {"cupy", "numpy"}:
        raise TypeError("cannot mix NumPy and CuPy arrays in one call; move them to one device")
    if "cupy" in kinds:
        import cupy
        from . import _cupy_backend
        return cupy, _cupy_backend
    return np, _numpy_backend
