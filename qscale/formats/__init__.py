"""Numeric datatypes as data: integer, minifloat, MX block and lookup-table formats.

>>> from qscale.formats import get_format
>>> fmt = get_format("int4-g128")
>>> str(fmt), fmt.family, fmt.element_bits, fmt.bits_per_element
('int4-g128', 'int', 4, 4.125)
>>> fmt.groups_per_row(576), round(fmt.bits_per_element_for(576), 4)  # 4 x 128 + a partial group of 64
(5, 4.1389)

Each format is a frozen dataclass (``IntFormat``, ``FloatFormat``, ``MXFormat``, ``LUTFormat``) whose
``str()`` is its canonical spec (grammar in :mod:`qscale.formats.spec`). A format is data: the numerics are
:func:`qscale.kernels.fake_quant` ``(fmt, x)`` and :func:`qscale.kernels.make_quantizer` ``(fmt, w_slice)``
(torch reference in :mod:`qscale.kernels.reference`).

Conventions
-----------
* Scales, groups, channels and MX blocks run along the LAST axis. A group (or MX block) size need not
  divide it: a row of ``n`` is split into ``n // G`` full groups and, if ``n % G != 0``, one trailing
  partial group of ``n % G`` elements with its own scale (own absmax / zero point / MSE clip / E8M0
  exponent / LUT absmax). ``fmt.bits_per_element_for(n)`` counts that extra scale:
  int4-g128 on a row of 576 is 4 groups of 128 + 1 of 64, 4 + 16 * 5 / 576 = 4.1389 bits
  (``fmt.bits_per_element`` stays the nominal 4.125). Details in :mod:`qscale.formats.core`.
* All arithmetic is fp32 (inputs of any float dtype are upcast; the output has the input dtype).
  Rounding is round-half-to-even everywhere (``torch.round``; minifloats by exponent extraction).
* Symmetric integers use the restricted range -(2^(b-1)-1)..2^(b-1)-1 (int4: -7..7), so q(-x) == -q(x).
* Bare ``int<b>`` and ``fp<b>`` are per-channel (one scale per row); ``nf<b>`` defaults to groups of 64,
  ``cbrt<b>`` to groups of 128, MX to blocks of 32.

NaN / Inf policy (all families)
-------------------------------
* NaN stays NaN in its own element and does not poison its group's scale (scales use finite values only).
* +-Inf saturates to the signed largest value representable in its group (after scaling and, for
  ``-mse``, clipping; for asymmetric int the group's top / bottom code), and is ignored when the scale
  is chosen.
* Zeros stay exactly zero (the sign of -0 is not guaranteed). A group whose finite values are all zero
  gets scale 1 (int, fp, lut) or the smallest E8M0 scale 2^-127 (mx): its zeros stay zero and an Inf
  in it saturates to that scale times the element maximum.
"""

from __future__ import annotations

from qscale.formats.core import (
    MSE_CLIP_RATIOS,
    FloatFormat,
    Format,
    FormatError,
    IntFormat,
    LUTFormat,
    MXFormat,
    cbrt_levels,
    normal_float_levels,
)
from qscale.formats.elements import E2M1, E2M3, E3M2, E4M3, E5M2, MINIFLOATS, MiniFloat
from qscale.formats.spec import FORMAT_SETS, GRAMMAR, expand_formats, format_set, get_format, list_formats

__all__ = [
    "E2M1",
    "E2M3",
    "E3M2",
    "E4M3",
    "E5M2",
    "FORMAT_SETS",
    "GRAMMAR",
    "MINIFLOATS",
    "MSE_CLIP_RATIOS",
    "FloatFormat",
    "Format",
    "FormatError",
    "IntFormat",
    "LUTFormat",
    "MXFormat",
    "MiniFloat",
    "cbrt_levels",
    "expand_formats",
    "format_set",
    "get_format",
    "list_formats",
    "normal_float_levels",
]
