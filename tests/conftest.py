"""Fixtures of the cupy_softmax test suite.

* ``xp``: the backend, numpy or cupy.  Every test that takes it runs on both;
  the cupy cases skip when cupy is not importable or no GPU is present.
* poisoned outputs (autouse): every array the library allocates starts filled
  with ``POISON_VALUE``, so an element a backend forgets to write fails.
* ``small_tiles``: the NumPy path walks the reduced axis in tiny blocks, so
  that the merge of block states is exercised on small inputs.
* RuntimeWarning is an error in every test: none may escape the library.
* Hypothesis profiles "ci" (derandomized, no deadline, quick) and "dev" (more
  examples), chosen by $HYPOTHESIS_PROFILE, else "ci" when $CI is set, else "dev".

Helpers (tolerances, references, comparisons) live in ``_helpers.py``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from _helpers import CUPY, CUPY_SKIP_REASON

POISON_VALUE = 1234.5

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=2000,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "error::RuntimeWarning")


def pytest_report_header(config):
    gpu = f"cupy {CUPY.__version__} with a GPU" if CUPY is not None else f"cupy cases skip: {CUPY_SKIP_REASON}"
    return [f"cupy_softmax tests: hypothesis profile {settings._current_profile}; {gpu}"]


# Session scope: hypothesis refuses function-scoped fixtures under @given, and the
# backend is only a parameter.
@pytest.fixture(scope="session", params=["numpy", "cupy"])
def xp(request):
    if request.param == "numpy":
        return np
    if CUPY is None:
        pytest.skip(CUPY_SKIP_REASON)
    return CUPY


@pytest.fixture(scope="session", autouse=True)
def poisoned_outputs():
    from cupy_softmax import _alloc
    old = _alloc.POISON
    assert old is None, "POISON must default to None"
    _alloc.POISON = POISON_VALUE
    try:
        yield POISON_VALUE
    finally:
        _alloc.POISON = old


@pytest.fixture(params=[None, 7], ids=["tile-default", "tile-7"])
def tiles(request, monkeypatch):
    """Run once with the default block size and once with blocks of 7 elements."""
    if request.param is not None:
        from cupy_softmax import _numpy_backend
        monkeypatch.setattr(_numpy_backend, "TILE_ELEMENTS", request.param)
    return request.param


@pytest.fixture
def small_tiles(monkeypatch):
    from cupy_softmax import _numpy_backend
    monkeypatch.setattr(_numpy_backend, "TILE_ELEMENTS", 64)
    return 64
