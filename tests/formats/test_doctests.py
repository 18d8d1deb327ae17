"""The worked numbers in the formats/kernels docstrings are executed, so they cannot drift."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "qscale.formats",
    "qscale.formats.core",
    "qscale.formats.elements",
    "qscale.formats.spec",
    "qscale.kernels",
    "qscale.kernels.reference",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
