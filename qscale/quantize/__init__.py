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
from qscale.quantize.rtn import RTN, quantize_layers
from qscale.quantize.sqnr import db, layer_sqnr

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

# The methods in their own modules register themselves on import.
from qscale.quantize import activation, gptq, perturb, smoothquant  # noqa: E402, F401
