"""qscale.lm: load causal LMs (HF directories, GGUF files, the zoo), their facts, and the zoo trainer.

``load``/``LoadedModel``/``LoadError`` come from :mod:`qscale.lm.loading`, ``ModelFacts`` from
:mod:`qscale.lm.facts`, ``linear_layers``/``LinearRef`` from :mod:`qscale.lm.layers`. They are imported on first
use so that ``import qscale.lm`` stays light (no torch/transformers until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load": "qscale.lm.loading",
    "LoadedModel": "qscale.lm.loading",
    "LoadError": "qscale.lm.loading",
    "ModelFacts": "qscale.lm.facts",
    "model_facts": "qscale.lm.facts",
    "count_params": "qscale.lm.facts",
    "linear_layers": "qscale.lm.layers",
    "LinearRef": "qscale.lm.layers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qscale.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
