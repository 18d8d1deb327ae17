"""Dynamic activation fake quantization with per-token scales (the W8A8-style entry point).

``act_fake_quant(fmt, x)`` views an activation ``x`` of shape ``(..., features)`` as ``(tokens, features)``
(``tokens`` = the product of the leading axes) and quantizes it with scales computed from the tensor itself:

* per-tensor formats (``int8-pt``, ``fp8-e4m3-pt``) get **one scale per token** (per row), i.e. the
  per-channel variant of the format (``int8-pt`` -> ``int8-pc``) applied to the 2-D view;
* per-channel formats already have one scale per row = per token;
* group / block formats (``int4-g128``, ``mxfp8-e4m3-b32``) keep their groups along the feature axis, so each
  token has one scale per group of features;
* unscaled formats (``fp8-e4m3-raw``) are a plain saturating cast.

``per_token=False`` is plain :func:`qscale.kernels.fake_quant` (a per-tensor format then has one scale for the
whole activation).

Worked example (int8, symmetric absmax, per token). Two tokens ``[[0.5, -1.27], [100.0, 3.0]]``: token 0 has
``amax = 1.27``, scale ``1.27/127 = 0.01``, so ``0.5 -> 50 * 0.01 = 0.5``; token 1 has scale ``100/127``, so
``3.0 -> round(3.81) = 4 -> 4 * 100/127 = 3.1496...``. With one scale per tensor (``per_token=False``) the loud
token's scale ``100/127`` would also coarsen token 0 to ``[0.7874, -1.5748]`` (``round(0.635) = 1``,
``round(-1.6129) = -2`` steps of ``0.7874``).

Backends follow :mod:`qscale.kernels`: ``"auto"`` (the default; the preference set by
:func:`qscale.kernels.set_backend` or ``$QSCALE_KERNEL_BACKEND`` applies) runs
:func:`qscale.kernels.triton_kernels.act_quant_triton` for CUDA tensors when triton imports and falls back to the
torch reference if that kernel raises ``NotImplementedError`` (e.g. float64 input); ``"torch"`` always runs the
reference; ``"triton"`` forces the Triton kernel, which needs a CUDA tensor, or a CPU tensor under Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is imported) -- anything else is an error, not a silent
fallback. Both paths are bit-identical (``tests/kernels/test_act.py``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from qscale.kernels import _check_backend, _triton_module, get_backend
from qscale.kernels import fake_quant as _fake_quant
from qscale.kernels.reference import fake_quant_reference

if TYPE_CHECKING:
    import torch

    from qscale.formats import Format

__all__ = ["act_fake_quant", "per_token_format"]


def per_token_format(fmt: Format | str) -> Format:
    """The format whose plain fake-quant along the last axis is ``fmt``'s per-token dynamic quantization.

    Per-tensor formats become per-channel (one scale per row of the last axis); all others are returned as is.

    >>> str(per_token_format("int8-pt")), str(per_token_format("fp8-e4m3-pt")), str(per_token_format("int4-g128"))
    ('int8-pc', 'fp8-e4m3-pc', 'int4-g128')
    """
    from qscale.formats import get_format

    f = get_format(fmt)
    if f.granularity == "tensor":
        return dataclasses.replace(f, granularity="channel")
    return f


def _triton_act(x: torch.Tensor, backend: str) -> str:
    """``"torch"``, ``"triton"`` (forced: errors propagate) or ``"auto-triton"`` (falls back)."""
    b = _check_backend(backend, "the backend argument")
    if b == "auto":
        b = get_backend()
    if b == "triton":
        if _triton_module() is None:
            raise ValueError(
                "the triton backend is not available (triton or qscale.kernels.triton_kernels missing); "
                "use backend='torch' or 'auto'"
            )
        from qscale.kernels.triton_kernels import triton_available

        if not triton_available(x.device):
            raise ValueError(
                f"the triton backend cannot run on a {x.device.type} tensor here: it needs a CUDA tensor, or "
                "TRITON_INTERPRET=1 set before triton is imported for CPU tensors; use backend='torch' or 'auto'"
            )
        return "triton"
    if b == "auto" and x.is_cuda and _triton_module() is not None:
        return "auto-triton"
    return "torch"


def act_fake_quant(
    fmt: Format | str, x: torch.Tensor, per_token: bool = True, backend: str = "auto"
) -> torch.Tensor:
    """Fake-quantize activations ``x`` (..., features) with dynamic scales; same shape and dtype, fp32 math.

    ``per_token=True``: one scale per token for per-tensor formats (see the module docstring); channel,
    group and block formats use their own granularity along the feature axis. ``per_token=False``: exactly
    :func:`qscale.kernels.fake_quant` (one scale per tensor for per-tensor formats).
    """
    import torch

    from qscale.formats import get_format

    f = get_format(fmt)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"act_fake_quant expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("act_fake_quant expects activations of shape (..., features), got a 0-d tensor")
    if not per_token:
        return _fake_quant(f, x, backend=backend)
    b = _triton_act(x, backend)
    if b != "torch":
        from qscale.kernels.triton_kernels import act_quant_triton

        try:
            return act_quant_triton(f, x)
        except NotImplementedError:
            if b == "triton":
                raise
    x2 = x.reshape(-1, x.shape[-1])  # (tokens, features): every row gets its own scale(s)
    return fake_quant_reference(per_token_format(f), x2).reshape(x.shape)
