"""The examples in the public docstrings run and print what they say (NumPy path)."""

import doctest
import importlib

import pytest

MODULES = ["cupy_softmax._api", "cupy_softmax._attention"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
