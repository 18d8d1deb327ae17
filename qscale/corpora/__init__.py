"""qscale.corpora: packaged text, deterministic splits, eval windows and calibration sampling.

``list_corpora`` / ``read_split`` live in :mod:`qscale.corpora.text`; ``get_windows`` (in
:mod:`qscale.corpora.windows`) and ``calibration_batch`` (in :mod:`qscale.corpora.calibration`) are imported
lazily on first use, so ``import qscale.corpora`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from qscale.corpora.text import (
    SPLITS,
    CorpusError,
    CorpusInfo,
    corpus_info,
    corpus_names,
    documents,
    list_corpora,
    read_split,
)

_LAZY = {
    "get_windows": "qscale.corpora.windows",
    "EvalWindows": "qscale.corpora.windows",
    "calibration_batch": "qscale.corpora.calibration",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qscale.corpora' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "SPLITS",
    "CorpusError",
    "CorpusInfo",
    "EvalWindows",
    "calibration_batch",
    "corpus_info",
    "corpus_names",
    "documents",
    "get_windows",
    "list_corpora",
    "read_split",
]
