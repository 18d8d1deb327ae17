"""Bulk fake-quant primitives: a torch reference for every format and (optionally) Triton GPU kernels.

>>> import torch
>>> from qscale.kernels import fake_quant
>>> fake_quant("int4-pc", torch.tensor([[0.7, -1.4]])).tolist()
[[0.800000011920929, -1.399999976158142]]

The entry points take the format first: ``fake_quant(fmt, x)``, ``fake_quant_with_sqnr(fmt, x)`` and
``make_quantizer(fmt, w_slice)`` (scales fixed once from a slice, as GPTQ needs). A format is data
(:mod:`qscale.formats`); it does not quantize anything itself.

Backend choice, first match wins:

1. the ``backend`` argument when it is ``"torch"`` or ``"triton"``;
2. :func:`set_backend` (``set_backend(None)`` clears it);
3. the environment variable ``QSCALE_KERNEL_BACKEND`` (``auto``, ``torch`` or ``triton``);
4. ``"auto"``: Triton when the tensor is on CUDA, ``triton`` imports and
   ``qscale.kernels.triton_kernels`` exists (and does not raise ``NotImplementedError`` for the
   format), else the torch reference (:mod:`qscale.kernels.reference`), which runs CPU tensors through
   the fused C loops of :mod:`qscale.kernels.cpu_fused` (same bits; ``QSCALE_CPU_FUSED=0`` for op-by-op torch).

A forced ``"triton"`` with a CPU tensor or without Triton is an error, not a silent fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING

from qscale.kernels.reference import fake_quant_reference, fake_quant_with_sqnr_reference
from qscale.kernels.reference import make_quantizer as _make_quantizer_reference
from qscale.registry import UnknownName, unknown_name_message

if TYPE_CHECKING:
    import torch

    from qscale.formats import Format

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "QSCALE_KERNEL_BACKEND"


@dataclass
class _BackendState:
    override: str | None = None


_STATE = _BackendState()


def _check_backend(name: str, where: str) -> str:
    b = str(name).strip().lower()
    if b not in BACKENDS:
        raise UnknownName(f"{where}: {unknown_name_message(name, BACKENDS, 'kernel backend')}")
    return b


def set_backend(name: str | None) -> None:
    """Override the default backend process-wide (``None`` restores env-var / auto selection)."""
    _STATE.override = None if name is None else _check_backend(name, "set_backend()")


def get_backend() -> str:
    """The preference in force when ``backend="auto"`` is passed: override, else env var, else ``"auto"``."""
    if _STATE.override is not None:
        return _STATE.override
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_backend(env, f"${ENV_VAR}")
    return "auto"


@lru_cache(maxsize=1)
def _triton_module() -> ModuleType | None:
    """``qscale.kernels.triton_kernels`` if it and triton import, else None (cached)."""
    try:
        import triton  # noqa: F401

        from qscale.kernels import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def triton_available() -> bool:
    """True when the Triton kernels module and triton import (a CUDA device is still needed to use them)."""
    return _triton_module() is not None


def resolve_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend (``"torch"`` or ``"triton"``) a call with this tensor and argument would try first."""
    return "torch" if _resolve(x, backend) == "torch" else "triton"


def _resolve(x: torch.Tensor, backend: str) -> str:
    """``"torch"``, ``"triton"`` (forced) or ``"auto-triton"`` (falls back on NotImplementedError)."""
    b = _check_backend(backend, "the backend argument")
    if b == "auto":
        b = get_backend()
    if b == "triton":
        if not x.is_cuda:
            raise ValueError(
                "the triton backend needs a CUDA tensor; use backend='torch' (or 'auto') for CPU tensors"
            )
        if _triton_module() is None:
            raise ValueError(
                "the triton backend is not available (triton or qscale.kernels.triton_kernels missing)"
            )
        return "triton"
    if b == "auto" and x.is_cuda and _triton_module() is not None:
        return "auto-triton"
    return "torch"


def _as_format(fmt: Format | str) -> Format:
    from qscale.formats import get_format

    return get_format(fmt)


def fake_quant(fmt: Format | str, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Quantize-dequantize ``x`` in ``fmt`` (a Format or spec); same shape and dtype, fp32 arithmetic."""
    f = _as_format(fmt)
    b = _resolve(x, backend)
    if b != "torch":
        mod = _triton_module()
        assert mod is not None
        try:
            return mod.fake_quant_triton(f, x)
        except NotImplementedError:
            if b == "triton":
                raise
    return fake_quant_reference(f, x)


def make_quantizer(fmt: Format | str, w_slice: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fix scales (zero points, clip ratios) from ``w_slice`` once; return a quantizer of same-row tensors.

    ``w_slice`` is ``(rows, span)``: one scale per row computed over its last axis (for per-tensor formats: one
    scale over the whole tensor). The returned function fake-quantizes any ``(rows, c)`` tensor with those fixed
    scales. ``make_quantizer(fmt, w)(w)`` equals ``fake_quant(fmt, w)`` bit for bit when ``w`` is exactly one
    scale span wide. Always the torch reference (GPTQ quantizes one column at a time).
    """
    return _make_quantizer_reference(_as_format(fmt), w_slice)


def fake_quant_with_sqnr(
    fmt: Format | str, x: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, signal, noise)``: ``q = fake_quant(fmt, x)``; ``signal = sum x^2`` and ``noise = sum (x - q)^2``
    as 0-d float64 tensors over the finite elements of ``x`` (SQNR dB = 10 log10(signal / noise))."""
    f = _as_format(fmt)
    b = _resolve(x, backend)
    if b != "torch":
        mod = _triton_module()
        assert mod is not None
        fused = getattr(mod, "fake_quant_with_sqnr_triton", None)
        try:
            if fused is not None:
                return fused(f, x)
            import torch

            q = mod.fake_quant_triton(f, x)
            xd = x.double()
            fin = torch.isfinite(xd)
            z = torch.zeros((), dtype=torch.float64, device=x.device)
            return q, torch.where(fin, xd * xd, z).sum(), torch.where(fin, (xd - q.double()) ** 2, z).sum()
        except NotImplementedError:
            if b == "triton":
                raise
    return fake_quant_with_sqnr_reference(f, x)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "fake_quant",
    "fake_quant_reference",
    "fake_quant_with_sqnr",
    "get_backend",
    "make_quantizer",
    "resolve_backend",
    "set_backend",
    "triton_available",
]
