"""The format dataclasses: integer, minifloat, MX block and lookup-table formats.

Every format is a frozen, hashable dataclass whose canonical spec string (``str(fmt)``) parses back to
an equal object (``get_format(str(fmt)) == fmt``) and whose ``to_dict()`` is JSON-serialisable.

Granularity (which elements share one scale) is always along the LAST axis of a tensor:

* ``"tensor"`` (spec ``-pt``): one scale for the whole tensor;
* ``"channel"`` (spec ``-pc``): one scale per row (for an ``(out, in)`` weight: per output channel);
* ``"group"`` (spec ``-g<G>``): one scale per run of ``G`` consecutive last-axis elements (the last
  run of a row may be shorter, see below);
* ``"none"`` (spec ``-raw``, fp only): no scale at all, a direct cast to the element.

MX formats always use blocks of ``block_size`` (32, 64 or 128) along the last axis.

Partial trailing groups (every group and block format: int, fp, MX, LUT)
-------------------------------------------------------------------------
Real layer widths are often not multiples of the group (SmolLM2: 576, 1536; Qwen2.5: 896, 4864, 8960).
A row of ``n`` last-axis elements with group (or MX block) size ``G`` is split, from the left, into
``n // G`` full groups of ``G`` and, when ``n % G != 0``, ONE trailing partial group of the last
``n % G`` elements. The partial group is an ordinary group of its own: its scale (absmax, min/max and
zero point, MSE clip ratio, E8M0 exponent, LUT absmax) is computed over just those elements, so
quantizing a row equals quantizing ``x[..., :G]``, ``x[..., G:2G]``, ..., ``x[..., (n//G)*G:]`` each
alone and concatenating. A row shorter than ``G`` is one partial group. ``scale_span(n)`` still
returns ``G`` (the group size); :meth:`Format.groups_per_row` gives ``ceil(n / G)``.

Storage cost: ``bits_per_element`` is the nominal figure ``element_bits + scale_bits / G``;
:meth:`Format.bits_per_element_for` counts the partial group's scale exactly,
``element_bits + scale_bits * ceil(n / G) / n``. Worked example, int4-g128 on a row of 576: 4 full
groups of 128 plus one of 64 (5 scales), bits = 4 + 16 * 5 / 576 = 4.1389 (nominal 4.125); mxfp4
(blocks of 32, E8M0 scales of 8 bits) on 100: 3 blocks + one of 4, bits = 4 + 8 * 4 / 100 = 4.32.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from statistics import NormalDist
from typing import Any, ClassVar

from qscale.formats.elements import DEFAULT_ELEMENT, MINIFLOATS, MiniFloat

GRANULARITIES = ("tensor", "channel", "group", "none")
MX_BLOCK_SIZES = (32, 64, 128)
#: Bits assumed for a stored fp scale (and an asymmetric zero point) in ``bits_per_element``.
SCALE_BITS = 16
#: Bits of the MX shared scale (E8M0).
MX_SCALE_BITS = 8
#: Clip ratios tried by ``clip="mse"``: 1.0, 0.98, ..., 0.50 (26 ratios, largest first; ties keep the largest).
MSE_CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.02 * i, 2) for i in range(26))


class FormatError(ValueError):
    """A format spec or format parameter that is not valid; the message names the valid choices."""


def _gran_token(granularity: str, group_size: int) -> str:
    return {"tensor": "pt", "channel": "pc", "none": "raw"}.get(granularity, f"g{group_size}")


def _gran_words(granularity: str, group_size: int) -> str:
    return {
        "tensor": "per-tensor scale",
        "channel": "per-channel scale",
        "none": "unscaled cast",
    }.get(granularity, f"one scale per group of {group_size}")


def _check_granularity(granularity: str, group_size: int, allowed: tuple[str, ...]) -> None:
    if granularity not in allowed:
        raise FormatError(
            f"granularity {granularity!r} is not valid here; choose one of {', '.join(allowed)}"
        )
    if granularity == "group":
        if not isinstance(group_size, int) or group_size < 1:
            raise FormatError(
                f"group_size must be a positive integer for per-group scaling, got {group_size!r}"
            )
    elif group_size != 0:
        raise FormatError(
            f"group_size must be 0 unless granularity is 'group' (got {group_size} with {granularity!r})"
        )


def _check_n_cols(n_cols: int) -> int:
    try:
        n = operator.index(n_cols)
    except TypeError:
        n = 0
    if isinstance(n_cols, bool) or n < 1:
        raise FormatError(f"a row length must be a positive integer, got {n_cols!r}")
    return n


class Format:
    """Base class of all formats (see the subclasses). Not instantiated directly.

    Shared API: ``family``, ``element_bits``, ``bits_per_element``, ``bits_per_element_for(n_cols)``,
    ``description``, ``per_tensor``, ``scale_span(n_cols)``, ``groups_per_row(n_cols)``, ``to_dict()``/``from_dict()``.
    A format is data: its numerics are :func:`qscale.kernels.fake_quant` ``(fmt, x)`` and
    :func:`qscale.kernels.make_quantizer` ``(fmt, w_slice)``.
    """

    family: ClassVar[str] = ""
    granularity: str
    group_size: int

    # --- identity -------------------------------------------------------------------------------------
    def spec(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the canonical ``spec``, the ``family`` and every field."""
        d = asdict(self)  # type: ignore[call-overload]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"spec": self.spec(), "family": self.family, **d}

    def facts(self) -> dict[str, Any]:
        """What a reader is shown about a format, with the one set of key names every output uses (``qscale
        formats``, ``GET /api/formats``, the law inputs read off a format): ``spec family element_bits block
        granularity bits_per_element description``. int4-g128 -> block 128, bits_per_element 4.125."""
        return {
            "spec": self.spec(),
            "family": self.family,
            "element_bits": self.element_bits,
            "block": self.block,
            "granularity": self.granularity,
            "bits_per_element": self.bits_per_element,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Format:
        """Inverse of :meth:`to_dict` (the ``spec`` key, if present, must agree with the fields)."""
        family = d.get("family")
        sub = _FAMILIES.get(str(family))
        if sub is None:
            raise FormatError(f"unknown format family {family!r}; choose one of {', '.join(_FAMILIES)}")
        names = {f.name for f in fields(sub)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        fmt = sub(**kwargs)
        if "spec" in d and d["spec"] != fmt.spec():
            raise FormatError(f"dict spec {d['spec']!r} disagrees with its fields ({fmt.spec()!r})")
        return fmt

    # --- sizes ----------------------------------------------------------------------------------------
    @property
    def element_bits(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def scale_bits_per_group(self) -> int:
        """Bits of per-group metadata (scale, zero point) counted in ``bits_per_element``."""
        return SCALE_BITS

    @property
    def bits_per_element(self) -> float:
        """Element bits plus scale overhead per element for per-group/block formats.

        Per-channel and per-tensor scales count as zero overhead (a 16-bit scale per row of 4096 adds
        0.004 bits). This is the nominal figure (``G`` dividing the row); :meth:`bits_per_element_for`
        counts a partial trailing group exactly. Examples: int4-g128 -> 4 + 16/128 = 4.125; int4-g128-asym -> 4.25;
        mxfp4-e2m1-b32 -> 4 + 8/32 = 4.25; mxint4-b128 -> 4.0625; nf4-g64 -> 4.25.
        """
        if self.granularity == "group":
            return self.element_bits + self.scale_bits_per_group / self.group_size
        return float(self.element_bits)

    @property
    def per_tensor(self) -> bool:
        """True when one scale serves the whole tensor (also for unscaled ``-raw`` casts)."""
        return self.granularity in ("tensor", "none")

    @property
    def block(self) -> int:
        """Group / block size, or 0 for per-channel and per-tensor formats."""
        return self.group_size if self.granularity == "group" else 0

    def scale_span(self, n_cols: int) -> int:
        """Consecutive last-axis columns sharing one scale in a row of ``n_cols`` (``n_cols`` if per-row/tensor).

        For group/block formats this is the group size ``G`` whatever ``n_cols`` is: when ``G`` does not
        divide ``n_cols`` the row's last group is a partial one of ``n_cols % G`` columns with its own
        scale (see the module docstring); a row shorter than ``G`` is a single partial group.

        >>> from qscale.formats import get_format
        >>> get_format("int4-g128").scale_span(4096), get_format("int8-pc").scale_span(4096)
        (128, 4096)
        >>> get_format("int4-g128").scale_span(576)  # 4 groups of 128 and a partial group of 64
        128
        """
        if self.granularity == "group":
            return self.group_size
        return n_cols

    def groups_per_row(self, n_cols: int) -> int:
        """Scales per row of ``n_cols``: ``ceil(n_cols / G)`` for groups/blocks (partial group included), else 1.

        >>> from qscale.formats import get_format
        >>> get_format("int4-g128").groups_per_row(576), get_format("mxfp4").groups_per_row(64)
        (5, 2)
        """
        n = _check_n_cols(n_cols)
        if self.granularity == "group":
            return -(-n // self.group_size)
        return 1

    def bits_per_element_for(self, n_cols: int) -> float:
        """Exact storage bits per element for rows of ``n_cols``, counting the partial group's scale.

        ``element_bits + scale_bits_per_group * ceil(n_cols / G) / n_cols`` for group/block formats;
        ``bits_per_element`` for per-channel/per-tensor/unscaled ones. Equals ``bits_per_element`` when
        ``G`` divides ``n_cols``.

        >>> from qscale.formats import get_format
        >>> round(get_format("int4-g128").bits_per_element_for(576), 4)  # 4 + 16 * 5 / 576
        4.1389
        >>> get_format("int4-g128").bits_per_element_for(4096), get_format("int8-pc").bits_per_element_for(576)
        (4.125, 8.0)
        """
        n_groups = self.groups_per_row(n_cols)
        if self.granularity == "group":
            return self.element_bits + self.scale_bits_per_group * n_groups / operator.index(n_cols)
        return self.bits_per_element

    @property
    def description(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------
# Integer formats
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntFormat(Format):
    """Uniform integer grid of ``bits`` bits with an fp32 scale.

    Symmetric (default): the restricted range ``-(2^(b-1)-1) .. 2^(b-1)-1`` (int4: -7..7, int8:
    -127..127), so ``q(-x) == -q(x)``; scale = absmax / (2^(b-1)-1). Example int4, group [0.7, -1.4]:
    scale = 1.4/7 = 0.2, q = [round(3.5)=4 -> 0.8, -7 -> -1.4] (torch.round: half to even).

    Asymmetric (``-asym``): codes ``0 .. 2^b-1`` with an integer zero point; range widened to include 0:
    lo = min(min x, 0), hi = max(max x, 0), scale = (hi-lo)/(2^b-1), zero = clamp(round(-lo/scale)),
    q = (clamp(round(x/scale) + zero, 0, 2^b-1) - zero) * scale, so 0 maps exactly to 0.

    ``clip="mse"``: the clip ratio r in ``MSE_CLIP_RATIOS`` (1.0 .. 0.5) minimising the group's squared
    error is chosen per group/channel (absmax, or lo/hi, multiplied by r before the scale is derived).
    """

    bits: int
    granularity: str = "channel"
    group_size: int = 0
    symmetric: bool = True
    clip: str = "absmax"

    family: ClassVar[str] = "int"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise FormatError(f"int formats have 2..8 bits, got {self.bits!r}")
        _check_granularity(self.granularity, self.group_size, ("tensor", "channel", "group"))
        if self.clip not in ("absmax", "mse"):
            raise FormatError(f"clip must be 'absmax' or 'mse', got {self.clip!r}")

    @property
    def qmax(self) -> int:
        """Largest code: 2^(b-1)-1 symmetric (int4: 7), 2^b-1 asymmetric (int4: 15)."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def element_bits(self) -> int:
        return self.bits

    @property
    def scale_bits_per_group(self) -> int:
        return SCALE_BITS if self.symmetric else 2 * SCALE_BITS

    def spec(self) -> str:
        s = f"int{self.bits}-{_gran_token(self.granularity, self.group_size)}"
        if not self.symmetric:
            s += "-asym"
        if self.clip == "mse":
            s += "-mse"
        return s

    @property
    def description(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric (zero point)"
        clip = ", MSE-optimal clipping" if self.clip == "mse" else ""
        return f"{self.bits}-bit integer, {kind}, {_gran_words(self.granularity, self.group_size)}{clip}"


# ------------------------------------------------------------------------------------------------------
# Scaled minifloats
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FloatFormat(Format):
    """A minifloat element (``e4m3``, ``e5m2``, ``e3m2``, ``e2m3``, ``e2m1``) with an fp32 absmax scale.

    scale = absmax / max_normal, y = x / scale rounded to nearest-even in the element (subnormals kept,
    saturating to +-max_normal), q = y * scale. ``granularity="none"`` (spec ``-raw``) casts directly
    (scale 1; out-of-range values saturate). Example fp4-e2m1-pc, row [3.0, 0.4]: scale = 3/6 = 0.5,
    y = [6, 0.8] -> [6, 1.0] (E2M1 grid 0,0.5,1,1.5,2,3,4,6), q = [3.0, 0.5].
    """

    element: str
    granularity: str = "channel"
    group_size: int = 0

    family: ClassVar[str] = "fp"

    def __post_init__(self) -> None:
        if self.element not in MINIFLOATS:
            raise FormatError(
                f"unknown minifloat element {self.element!r}; choose one of {', '.join(MINIFLOATS)}"
            )
        _check_granularity(self.granularity, self.group_size, GRANULARITIES)

    @property
    def mini(self) -> MiniFloat:
        return MINIFLOATS[self.element]

    @property
    def element_bits(self) -> int:
        return self.mini.bits

    def spec(self) -> str:
        return f"fp{self.element_bits}-{self.element}-{_gran_token(self.granularity, self.group_size)}"

    @property
    def description(self) -> str:
        m = self.mini
        return f"FP{m.bits} {m.name.upper()} minifloat (max {m.max_normal:g}), {_gran_words(self.granularity, self.group_size)}"


# ------------------------------------------------------------------------------------------------------
# MX (OCP Microscaling v1.0)
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MXFormat(Format):
    """OCP Microscaling: one E8M0 power-of-two scale per block of ``block_size`` last-axis elements.

    X = 2^clamp(floor(log2(max|v|)) - emax_elem, -127, 127); elements v/X are rounded to nearest-even in
    the element and clamped to +-max_normal. An all-zero block gets X = 2^-127 (and stays zero).
    ``element`` is a minifloat name (``e4m3``, ``e5m2``, ``e3m2``, ``e2m3``, ``e2m1``) or ``int<b>``
    (b = 2..8): two's-complement elements with implicit scale 2^-(b-2), values k*2^-(b-2); emax_elem = 0
    and the clamp is symmetric at max_normal = 2 - 2^-(b-2) (MXINT8: +-1.984375; -2 is never produced).

    Worked example (MXFP4, E2M1, emax 2): block max 7.0 -> floor(log2 7) = 2, X = 2^0 = 1, 7 saturates
    to 6. Block max 0.3 -> floor(log2 0.3) = -2, X = 2^-4, 0.3/X = 4.8 -> 4 -> 0.25.
    """

    element: str
    block_size: int = 32

    family: ClassVar[str] = "mx"

    def __post_init__(self) -> None:
        if self.element.startswith("int"):
            b = self.element[3:]
            if not (b.isdigit() and 2 <= int(b) <= 8):
                raise FormatError(f"MX integer elements have 2..8 bits, got {self.element!r}")
        elif self.element not in MINIFLOATS:
            raise FormatError(
                f"unknown MX element {self.element!r}; choose one of {', '.join(MINIFLOATS)}, int2..int8"
            )
        if self.block_size not in MX_BLOCK_SIZES:
            raise FormatError(f"MX block size must be one of {MX_BLOCK_SIZES}, got {self.block_size!r}")

    @property
    def granularity(self) -> str:  # type: ignore[override]
        return "group"

    @property
    def group_size(self) -> int:  # type: ignore[override]
        return self.block_size

    @property
    def is_int(self) -> bool:
        return self.element.startswith("int")

    @property
    def mini(self) -> MiniFloat | None:
        return None if self.is_int else MINIFLOATS[self.element]

    @property
    def element_bits(self) -> int:
        return int(self.element[3:]) if self.is_int else MINIFLOATS[self.element].bits

    @property
    def emax_elem(self) -> int:
        """Exponent of the element's largest power of two: E2M1 2, E4M3 8, E5M2 15, int elements 0."""
        return 0 if self.is_int else MINIFLOATS[self.element].emax

    @property
    def max_normal(self) -> float:
        """Largest element magnitude: e.g. E2M1 6.0, MXINT8 2 - 2^-6 = 1.984375."""
        if self.is_int:
            return 2.0 - 2.0 ** -(self.element_bits - 2)
        return MINIFLOATS[self.element].max_normal

    @property
    def scale_bits_per_group(self) -> int:
        return MX_SCALE_BITS

    def spec(self) -> str:
        if self.is_int:
            return f"mx{self.element}-b{self.block_size}"
        return f"mxfp{self.element_bits}-{self.element}-b{self.block_size}"

    @property
    def description(self) -> str:
        el = f"INT{self.element_bits}" if self.is_int else self.element.upper()
        return f"OCP MX: {el} elements, shared E8M0 scale per block of {self.block_size}"


# ------------------------------------------------------------------------------------------------------
# Lookup-table (non-uniform) formats
# ------------------------------------------------------------------------------------------------------
LUT_KINDS = ("nf", "cbrt", "grid")


@lru_cache(maxsize=32)
def normal_float_levels(bits: int) -> tuple[float, ...]:
    """NormalFloat grid of ``bits`` bits (QLoRA / bitsandbytes construction), ascending, in [-1, 1].

    2^(b-1) positive and 2^(b-1)-1 negative standard-normal quantiles plus an exact zero, each half
    normalised so its extreme is +-1. Quantile probabilities run evenly from ``offset`` to 1/2 (excluded),
    offset = ((1 - 1/(2(2^b-1))) + (1 - 1/(2*2^b)))/2 (NF4: 0.9677083). NF4 gives
    -1, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0, 0.0796, 0.1609, 0.2461, 0.3379, 0.4407,
    0.5626, 0.7230, 1.
    """
    n = 2**bits
    offset = 0.5 * ((1 - 1 / (2 * (n - 1))) + (1 - 1 / (2 * n)))
    ppf = NormalDist().inv_cdf

    def half(count: int) -> list[float]:  # `count` quantiles from offset down towards 1/2 (excluded)
        return [ppf(offset + (0.5 - offset) * i / count) for i in range(count)]

    pos = half(2 ** (bits - 1))
    neg = half(2 ** (bits - 1) - 1)
    top = ppf(offset)
    return tuple(sorted([-v / top for v in neg] + [0.0] + [v / top for v in pos]))


@lru_cache(maxsize=32)
def cbrt_levels(bits: int) -> tuple[float, ...]:
    """Cube-root companding grid (Gong et al. 2024): ``(k/L)^3`` for k = -L..L, L = 2^(b-1)-1.

    cbrt4: L = 7, levels 0, 1/343, 8/343, 27/343, ..., 1 (and negatives): 15 levels, dense near zero.
    """
    L = 2 ** (bits - 1) - 1
    return tuple((k / L) ** 3 for k in range(-L, L + 1))


@lru_cache(maxsize=32)
def cbrt_boundaries(bits: int) -> tuple[float, ...]:
    """Decision thresholds of the cube-root quantizer: ``((k + 1/2)/L)^3``, k = -L..L-1 (midpoints in the
    companded domain, so rounding cbrt(y)*L to the nearest integer is reproduced exactly)."""
    L = 2 ** (bits - 1) - 1
    return tuple(((k + 0.5) / L) ** 3 for k in range(-L, L))


@dataclass(frozen=True)
class LUTFormat(Format):
    """A non-uniform grid scaled per group by absmax: ``kind`` is ``"nf"``, ``"cbrt"`` or ``"grid"``.

    scale = absmax / max|levels|; y = x / scale goes to the grid level whose decision interval holds it,
    q = level * scale. Decision boundaries are midpoints of neighbouring levels (nf, grid) or the
    companded midpoints ``((k+1/2)/L)^3`` (cbrt); a value exactly on a boundary goes to the UPPER level.
    Boundaries and levels are computed in float64 and stored as fp32 (:func:`qscale.kernels.reference.lut_tables`).

    * ``nf`` (NormalFloat, bits 2..8; nf4 = QLoRA's NF4): :func:`normal_float_levels`.
    * ``cbrt`` (bits 2..8): sign(y)|y|^(1/3) on a uniform symmetric grid of 2^b - 1 levels, cubed back.
    * ``grid``: user-given ``levels`` (spec ``lut[-1,-0.5,0,0.5,1]-g64``): strictly increasing, at least 2,
      finite, not all zero; element bits = ceil(log2(len(levels))). Grids are given inline in the spec, so a
      spec string is self-contained; there is deliberately no global registry of named grids.
    """

    kind: str
    bits: int = 0
    levels: tuple[float, ...] = ()
    granularity: str = "group"
    group_size: int = 64

    family: ClassVar[str] = "lut"

    def __post_init__(self) -> None:
        if self.kind not in LUT_KINDS:
            raise FormatError(f"unknown LUT kind {self.kind!r}; choose one of {', '.join(LUT_KINDS)}")
        _check_granularity(self.granularity, self.group_size, ("tensor", "channel", "group"))
        if self.kind == "grid":
            lv = tuple(float(v) for v in self.levels)
            if len(lv) < 2 or any(not math.isfinite(v) for v in lv):
                raise FormatError(f"a LUT grid needs at least 2 finite levels, got {self.levels!r}")
            if any(b <= a for a, b in zip(lv, lv[1:], strict=False)):
                raise FormatError(f"LUT grid levels must be strictly increasing, got {self.levels!r}")
            if max(abs(v) for v in lv) == 0:
                raise FormatError("LUT grid levels must not all be zero")
            if len(lv) > 256:
                raise FormatError(f"LUT grids have at most 256 levels, got {len(lv)}")
            object.__setattr__(self, "levels", lv)
            object.__setattr__(self, "bits", max(1, math.ceil(math.log2(len(lv)))))
        else:
            if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
                raise FormatError(f"{self.kind} formats have 2..8 bits, got {self.bits!r}")
            if self.levels:
                raise FormatError(
                    f"levels are derived for kind {self.kind!r}; give them only for kind 'grid'"
                )

    @property
    def grid(self) -> tuple[float, ...]:
        """The levels, ascending (derived for nf/cbrt)."""
        if self.kind == "nf":
            return normal_float_levels(self.bits)
        if self.kind == "cbrt":
            return cbrt_levels(self.bits)
        return self.levels

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Decision thresholds between consecutive levels (float64)."""
        if self.kind == "cbrt":
            return cbrt_boundaries(self.bits)
        g = self.grid
        return tuple(0.5 * (a + b) for a, b in zip(g, g[1:], strict=False))

    @property
    def element_bits(self) -> int:
        return self.bits

    def spec(self) -> str:
        gran = _gran_token(self.granularity, self.group_size)
        if self.kind == "grid":
            return f"lut[{','.join(repr(v) for v in self.levels)}]-{gran}"
        return f"{self.kind}{self.bits}-{gran}"

    @property
    def description(self) -> str:
        what = {
            "nf": f"NormalFloat{self.bits} (normal quantiles, exact zero)",
            "cbrt": f"{self.bits}-bit cube-root companding (Gong et al. 2024)",
            "grid": f"user grid of {len(self.levels)} levels",
        }[self.kind]
        return f"{what}, absmax {_gran_words(self.granularity, self.group_size)}".replace(
            "absmax one scale", "absmax scale"
        )


_FAMILIES: dict[str, type[Format]] = {"int": IntFormat, "fp": FloatFormat, "mx": MXFormat, "lut": LUTFormat}

__all__ = [
    "DEFAULT_ELEMENT",
    "GRANULARITIES",
    "LUT_KINDS",
    "MSE_CLIP_RATIOS",
    "MX_BLOCK_SIZES",
    "Format",
    "FloatFormat",
    "FormatError",
    "IntFormat",
    "LUTFormat",
    "MXFormat",
    "cbrt_boundaries",
    "cbrt_levels",
    "normal_float_levels",
]
