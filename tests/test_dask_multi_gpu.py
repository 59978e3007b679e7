"""Dask on several GPUs: dask-cuda's LocalCUDACluster, one worker per GPU.

Skips unless dask-cuda is installed and at least two GPUs are visible.  The
chunks are CuPy arrays made on the workers, so each GPU runs our kernels on its
own chunks and only states travel between them.  float64 data, so the float64
tolerances of test_dask apply.
"""

import numpy as np
import pytest
import scipy.special as sps

from _helpers import CUPY

dask_cuda = pytest.importorskip("dask_cuda")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import cupy_softmax as cs  # noqa: E402

pytestmark = pytest.mark.skipif(
    CUPY is None or CUPY.cuda.runtime.getDeviceCount() < 2, reason="needs two GPUs")


@pytest.fixture(scope="module")
def client():
    with dask_cuda.LocalCUDACluster(n_workers=2, threads_per_worker=1) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_two_gpus_logsumexp_and_softmax(client):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 400_000)) * 10
    dx = da.from_array(x, chunks=(4, 50_000)).map_blocks(CUPY.asarray)
    lse = cs.logsumexp(dx, axis=1).compute()
    assert isinstance(lse, CUPY.ndarray)
    np.testing.assert_allclose(lse.get(), sps.logsumexp(x, axis=1), rtol=1e-10)
    probs = cs.softmax(dx, axis=1).compute()
    np.testing.assert_allclose(probs.get(), sps.softmax(x, axis=1), rtol=1e-10, atol=1e-13)
    devices = client.run(lambda: CUPY.cuda.runtime.getDevice())
    assert len(devices) == 2
