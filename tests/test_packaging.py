"""The installed package: kernel sources as package resources, lazy imports, entry point.

These tests run against whatever ``import cupy_softmax`` finds: the editable
install of the README's test command, or a plain ``pip install .``.
"""

import importlib.metadata
import importlib.resources
import os
import pathlib
import re
import subprocess
import sys

import pytest

import cupy_softmax

REPO = pathlib.Path(__file__).resolve().parent.parent
PUBLIC = ["softmax", "log_softmax", "logsumexp", "SoftmaxState", "partial_state",
          "merge_states", "state_logsumexp", "softmax_from_state", "log_softmax_from_state"]


def _kernel_resources():
    root = importlib.resources.files("cupy_softmax.kernels_cu")
    return {p.name: p for p in root.iterdir() if p.name.endswith((".cu", ".cuh"))}


def test_kernel_sources_are_package_resources():
    found = _kernel_resources()
    assert any(name.endswith(".cuh") for name in found), sorted(found)
    assert any(name.endswith(".cu") for name in found), sorted(found)
    for name, resource in found.items():
        text = resource.read_text(encoding="utf-8")
        assert text.strip(), f"{name} is empty"


def test_every_kernel_source_in_the_checkout_is_installed():
    source_dir = REPO / "kernels_cu"
    if not source_dir.is_dir():
        pytest.skip("not run from a checkout")
    in_checkout = {p.name for p in source_dir.iterdir() if p.suffix in (".cu", ".cuh")}
    installed = _kernel_resources()
    assert in_checkout <= set(installed), sorted(in_checkout - set(installed))
    for name in in_checkout:
        assert installed[name].read_bytes() == (source_dir / name).read_bytes(), (
            f"installed {name} differs from the checkout: reinstall the package")


def test_public_names():
    for name in PUBLIC:
        assert hasattr(cupy_softmax, name), name
    assert set(PUBLIC) <= set(cupy_softmax.__all__)


def test_distribution_metadata():
    assert importlib.metadata.version("cupy-softmax") == cupy_softmax.__version__
    requires = importlib.metadata.requires("cupy-softmax") or []
    # Extra names are normalised (PEP 685): ml_dtypes is listed as ml-dtypes.
    extras = {re.sub(r"[-_.]+", "-", r.split("extra ==")[1].strip(" '\"")).lower()
              for r in requires if "extra ==" in r}
    assert {"test", "dask", "cuda12", "cuda13", "ml-dtypes"} <= extras, extras


def _modules_imported_by_cupy_softmax(tmp_path, watched):
    """Import cupy_softmax and call it on NumPy input in a fresh interpreter in
    which each of ``watched`` is a stub package that reports being imported
    (and then fails as if absent); return the names reported."""
    for name in watched:
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            "import sys\n"
            f"sys.stderr.write('IMPORTED {name}\\n')\n"
            "raise ImportError('stub')\n")
    code = ("import cupy_softmax\n"
            "cupy_softmax.softmax([1.0, 2.0], axis=0)\n"
            "cupy_softmax.log_softmax([[1.0, 2.0]], axis=1)\n"
            "cupy_softmax.logsumexp([1.0, 2.0], b=[1.0, 0.5])\n")
    env = dict(os.environ)
    package_parent = str(pathlib.Path(cupy_softmax.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return sorted(line.split()[1] for line in out.stderr.splitlines() if line.startswith("IMPORTED "))


def test_import_does_not_import_dask(tmp_path):
    """Dask support stays optional and costs nothing at import."""
    assert _modules_imported_by_cupy_softmax(tmp_path, ["dask"]) == []


def test_import_does_not_import_gpu_libraries(tmp_path):
    """CuPy, cupyx and torch are imported lazily: NumPy work never touches them."""
    assert _modules_imported_by_cupy_softmax(tmp_path, ["cupy", "cupyx", "torch"]) == []


def test_python_dash_m_self_check():
    """`python -m cupy_softmax` runs its self-check and exits 0 (no GPU needed)."""
    out = subprocess.run([sys.executable, "-m", "cupy_softmax", "--no-timing"],
                         capture_output=True, text=True, timeout=300,
                         cwd=pathlib.Path(cupy_softmax.__file__).parent.parent)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "FAIL" not in out.stdout
    assert "PASS" in out.stdout
