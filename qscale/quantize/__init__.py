"""qscale.quantize: algorithms that decide quantized weights and activations.

Every method registers itself by name (see :mod:`qscale.quantize.registry`); ``quantized(model, fmt, method=...)``
applies one in place and restores the float model on exit.
"""

from qscale.quantize.registry import (
    Method,
    MethodContext,
    MethodError,
    MethodSpec,
    get_method,
    list_methods,
    quantized,
    register_method,
)
from qscale.quantize.rtn import RTN, db, layer_sqnr, quantize_layers

__all__ = [
    "RTN",
    "Method",
    "MethodContext",
    "MethodError",
    "MethodSpec",
    "db",
    "get_method",
    "layer_sqnr",
    "list_methods",
    "quantize_layers",
    "quantized",
    "register_method",
]

# Methods in their own modules register on import; a module not written yet is skipped, a broken one raises.
import importlib as _importlib

for _mod in ("gptq", "activation", "smoothquant", "perturb"):
    try:
        _importlib.import_module(f"qscale.quantize.{_mod}")
    except ModuleNotFoundError as _err:
        if _err.name != f"qscale.quantize.{_mod}":
            raise
