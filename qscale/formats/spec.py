"""Spec strings: the parser (``get_format``), the built-in catalogue (``list_formats``) and named sets.

Grammar (case-insensitive; ``_`` may replace ``-``; canonical forms are what ``str(fmt)`` prints)::

    int<b>[-pt|-pc|-g<G>][-asym|-sym][-mse|-absmax]     b = 2..8; default per-channel (-pc)
    fp<b>[-<elem>][-pt|-pc|-g<G>|-raw]                   elem e4m3 (fp8 default) e5m2 e3m2 e2m3 e2m1 (fp4 default)
    mxfp<b>[-<elem>][-b<k>|-<k>]                         k = 32 (default), 64, 128
    mxint<b>[-b<k>|-<k>]                                 b = 2..8
    nf<b>[-pt|-pc|-g<G>]                                 NormalFloat, default -g64
    cbrt<b>[-pt|-pc|-g<G>]                               cube-root companding, default -g128
    lut[<v1>,<v2>,...][-pt|-pc|-g<G>]                    user grid (absmax-normalised), default -g64

Canonical forms always name the granularity and element: ``int4`` -> ``int4-pc``, ``mxfp4`` ->
``mxfp4-e2m1-b32``, ``mxint4_128`` -> ``mxint4-b128``, ``nf4`` -> ``nf4-g64``, ``fp8`` -> ``fp8-e4m3-pc``.
Also accepted: ``per-tensor``/``per-channel`` for ``pt``/``pc``, ``e4m3fn``/``e2m1fn``/... for the fn
encodings. fp6 and mxfp6 need an explicit element (e3m2 or e2m3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from qscale.formats.core import (
    DEFAULT_ELEMENT,
    MX_BLOCK_SIZES,
    FloatFormat,
    Format,
    FormatError,
    IntFormat,
    LUTFormat,
    MXFormat,
)
from qscale.formats.elements import MINIFLOATS
from qscale.registry import close_matches

GRAMMAR = (
    "int<b>[-pt|-pc|-g<G>][-asym][-mse] | fp<b>[-e4m3|-e5m2|-e3m2|-e2m3|-e2m1][-pt|-pc|-g<G>|-raw] | "
    "mxfp<b>[-<elem>][-b32|-b64|-b128] | mxint<b>[-b<k>] | nf<b>[-g<G>] | cbrt<b>[-g<G>] | lut[v1,v2,...][-g<G>]"
)

_LUT_DEFAULT_GROUP = {"nf": 64, "cbrt": 128, "grid": 64}
_ELEMENT_ALIASES = {f"{n}fn": n for n in MINIFLOATS} | {n: n for n in MINIFLOATS}


def _fail(spec: str, why: str) -> FormatError:
    near = close_matches(spec.strip().lower(), _suggestion_pool(), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return FormatError(f"unknown format {spec!r}: {why}{hint}. Grammar: {GRAMMAR}. See `qscale formats`.")


def _suggestion_pool() -> list[str]:
    aliases = [f"int{b}" for b in range(2, 9)] + [f"mxint{b}" for b in range(2, 9)]
    aliases += ["fp8", "fp8-e4m3", "fp8-e5m2", "fp6-e3m2", "fp6-e2m3", "fp4", "fp4-e2m1"]
    aliases += [
        "mxfp4",
        "mxfp6-e3m2",
        "mxfp6-e2m3",
        "mxfp8-e4m3",
        "mxfp8-e5m2",
        "nf3",
        "nf4",
        "cbrt3",
        "cbrt4",
    ]
    return aliases + list(list_formats())


def _granularity(tok: str) -> tuple[str, int] | None:
    if tok in ("pt", "tensor"):
        return "tensor", 0
    if tok in ("pc", "channel"):
        return "channel", 0
    m = re.fullmatch(r"g(\d+)", tok)
    if m:
        return "group", int(m.group(1))
    return None


def _normalise(spec: str) -> str:
    s = spec.strip().lower().replace("_", "-")
    s = s.replace("per-tensor", "pt").replace("per-channel", "pc")
    return s


def get_format(spec: str | Format) -> Format:
    """Parse a spec string (or pass a Format through) into a frozen Format.

    >>> str(get_format("int4")), str(get_format("mxint4_128")), get_format("int4-g128").bits_per_element
    ('int4-pc', 'mxint4-b128', 4.125)
    """
    if isinstance(spec, Format):
        return spec
    if not isinstance(spec, str):
        raise FormatError(f"a format spec must be a string or a Format, got {type(spec).__name__}")
    s = _normalise(spec)
    if not s:
        raise _fail(spec, "empty spec")
    try:
        if s.startswith("lut["):
            return _parse_lut_grid(spec, s)
        toks = s.split("-")
        head, rest = toks[0], toks[1:]
        if any(t == "" for t in rest):
            raise _fail(spec, "empty field between dashes")
        m = re.fullmatch(r"(int|fp|mxfp|mxint|nf|cbrt)(\d+)", head)
        if not m:
            raise _fail(spec, f"unknown format name {head!r}")
        kind, bits = m.group(1), int(m.group(2))
        if kind == "int":
            return _parse_int(spec, bits, rest)
        if kind == "fp":
            return _parse_fp(spec, bits, rest)
        if kind in ("mxfp", "mxint"):
            return _parse_mx(spec, kind, bits, rest)
        return _parse_lut(spec, kind, bits, rest)
    except FormatError as err:
        if str(err).startswith("unknown format"):
            raise
        raise _fail(spec, str(err)) from None


def _parse_int(spec: str, bits: int, rest: list[str]) -> IntFormat:
    gran, group, sym, clip = "channel", 0, True, "absmax"
    for t in rest:
        g = _granularity(t)
        if g:
            gran, group = g
        elif t in ("asym", "sym"):
            sym = t == "sym"
        elif t in ("mse", "absmax"):
            clip = t
        else:
            raise _fail(spec, f"unexpected field {t!r} for an int format (pt, pc, g<G>, asym, mse)")
    return IntFormat(bits, gran, group, sym, clip)


def _element(spec: str, bits: int, rest: list[str], mx: bool) -> tuple[str, list[str]]:
    if rest and rest[0] in _ELEMENT_ALIASES:
        el, rest = _ELEMENT_ALIASES[rest[0]], rest[1:]
    elif bits in DEFAULT_ELEMENT:
        el = DEFAULT_ELEMENT[bits]
    else:
        choices = [n for n, m in MINIFLOATS.items() if m.bits == bits]
        p = "mxfp" if mx else "fp"
        if not choices:
            raise _fail(spec, f"no {bits}-bit minifloat element (fp8, fp6, fp4 exist)")
        raise _fail(spec, f"{p}{bits} needs an element: {', '.join(f'{p}{bits}-{c}' for c in choices)}")
    if MINIFLOATS[el].bits != bits:
        raise _fail(spec, f"element {el} has {MINIFLOATS[el].bits} bits, not {bits}")
    return el, rest


def _parse_fp(spec: str, bits: int, rest: list[str]) -> FloatFormat:
    el, rest = _element(spec, bits, rest, mx=False)
    gran, group = "channel", 0
    for t in rest:
        g = _granularity(t)
        if g:
            gran, group = g
        elif t == "raw":
            gran, group = "none", 0
        else:
            raise _fail(spec, f"unexpected field {t!r} for an fp format (pt, pc, g<G>, raw)")
    return FloatFormat(el, gran, group)


def _parse_mx(spec: str, kind: str, bits: int, rest: list[str]) -> MXFormat:
    if kind == "mxfp":
        el, rest = _element(spec, bits, rest, mx=True)
    else:
        el = f"int{bits}"
    block = 32
    for t in rest:
        m = re.fullmatch(r"b?(\d+)", t)
        if m:
            block = int(m.group(1))
        else:
            raise _fail(spec, f"unexpected field {t!r} for an MX format (block b32, b64, b128)")
    if block not in MX_BLOCK_SIZES:
        raise _fail(spec, f"MX block size {block} is not one of {MX_BLOCK_SIZES}")
    return MXFormat(el, block)


def _parse_lut(spec: str, kind: str, bits: int, rest: list[str]) -> LUTFormat:
    gran, group = "group", _LUT_DEFAULT_GROUP[kind]
    for t in rest:
        g = _granularity(t)
        if not g:
            raise _fail(spec, f"unexpected field {t!r} for a {kind} format (pt, pc, g<G>)")
        gran, group = g
    return LUTFormat(kind, bits, (), gran, group)


def _parse_lut_grid(spec: str, s: str) -> LUTFormat:
    m = re.fullmatch(r"lut\[([^\]]*)\](.*)", s.replace(" ", ""))
    if not m:
        raise _fail(spec, "a LUT grid is written lut[v1,v2,...] followed by an optional -g<G>/-pc/-pt")
    try:
        levels = tuple(float(v) for v in m.group(1).split(","))
    except ValueError:
        raise _fail(spec, f"LUT levels must be numbers, got [{m.group(1)}]") from None
    tail = m.group(2)
    gran, group = "group", _LUT_DEFAULT_GROUP["grid"]
    if tail:
        if not tail.startswith("-"):
            raise _fail(spec, f"unexpected {tail!r} after the LUT grid")
        for t in tail[1:].split("-"):
            g = _granularity(t)
            if not g:
                raise _fail(spec, f"unexpected field {t!r} for a LUT grid (pt, pc, g<G>)")
            gran, group = g
    return LUTFormat("grid", 0, levels, gran, group)


# ------------------------------------------------------------------------------------------------------
# Catalogue and named sets
# ------------------------------------------------------------------------------------------------------
_CATALOGUE: tuple[str, ...] = (
    # integers, per channel / tensor
    *(f"int{b}-pc" for b in range(2, 9)),
    "int8-pt",
    "int4-pt",
    # integers, per group
    "int8-g128",
    "int6-g128",
    "int5-g128",
    "int4-g32",
    "int4-g64",
    "int4-g128",
    "int3-g64",
    "int3-g128",
    "int2-g64",
    "int2-g128",
    "int4-g128-asym",
    "int3-g128-asym",
    "int2-g64-asym",
    "int4-pc-mse",
    "int4-g128-mse",
    "int3-g128-mse",
    "int4-g128-asym-mse",
    # scaled minifloats
    "fp8-e4m3-pt",
    "fp8-e4m3-pc",
    "fp8-e5m2-pc",
    "fp8-e4m3-raw",
    "fp8-e5m2-raw",
    "fp6-e3m2-pc",
    "fp6-e2m3-pc",
    "fp6-e3m2-g32",
    "fp6-e2m3-g32",
    "fp4-e2m1-pc",
    "fp4-e2m1-g32",
    "fp4-e2m1-g128",
    # MX
    "mxfp8-e4m3-b32",
    "mxfp8-e5m2-b32",
    "mxfp6-e3m2-b32",
    "mxfp6-e2m3-b32",
    "mxfp4-e2m1-b32",
    "mxfp4-e2m1-b64",
    "mxfp4-e2m1-b128",
    "mxint8-b32",
    "mxint6-b32",
    "mxint5-b32",
    "mxint4-b32",
    "mxint4-b128",
    "mxint3-b32",
    "mxint2-b32",
    # LUT
    "nf4-g64",
    "nf4-g128",
    "nf3-g64",
    "nf3-g128",
    "cbrt4-g128",
    "cbrt4-g64",
    "cbrt3-g128",
)

_DEFAULT_SET = (
    "int8-pc",
    "int4-pc",
    "int4-g128",
    "int3-g128",
    "fp8-e4m3-pc",
    "mxfp4-e2m1-b32",
    "nf4-g64",
    "int4-g128-mse",
)


def list_formats() -> tuple[str, ...]:
    """Canonical specs of the built-in catalogue (56 formats), grouped by family."""
    return _CATALOGUE


def _by_bits(b: int) -> tuple[str, ...]:
    return tuple(s for s in _CATALOGUE if get_format(s).element_bits == b)


FORMAT_SETS: dict[str, str] = {
    "all": "every catalogue format",
    "default": "a representative 8-format set for the CPU demo",
    "int": "integer formats",
    "fp": "scaled minifloat formats",
    "mx": "MX block formats (alias all-mx)",
    "all-mx": "MX block formats",
    "lut": "lookup-table formats (nf, cbrt)",
    **{f"all-{b}bit": f"catalogue formats with {b}-bit elements" for b in range(2, 9)},
}


def format_set(name: str) -> tuple[Format, ...]:
    """Formats of a named set (see ``FORMAT_SETS``): ``all``, ``default``, ``int``, ``fp``, ``mx``/``all-mx``,
    ``lut``, ``all-<b>bit`` (b = 2..8, by element bits: all-4bit has int4-*, fp4-*, mxfp4, mxint4, nf4, cbrt4)."""
    key = name.strip().lower().replace("_", "-")
    if key == "all":
        specs = _CATALOGUE
    elif key == "default":
        specs = _DEFAULT_SET
    elif key in ("int", "fp", "mx", "lut", "all-mx"):
        fam = key.removeprefix("all-")
        specs = tuple(s for s in _CATALOGUE if get_format(s).family == fam)
    elif (m := re.fullmatch(r"all-(\d+)bit", key)) and 2 <= int(m.group(1)) <= 8:
        specs = _by_bits(int(m.group(1)))
    else:
        near = close_matches(key, list(FORMAT_SETS), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise FormatError(f"unknown format set {name!r}{hint}; choose one of {', '.join(FORMAT_SETS)}")
    return tuple(get_format(s) for s in specs)


def _split_outside_brackets(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]`` (``"int4,lut[-1,0,1]-g32"`` -> two parts)."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def expand_formats(value: str | Iterable[str]) -> list[str]:
    """Canonical specs, in order and without repeats, from a named set (``all-4bit``), one spec, a
    comma-separated list (``"int4,nf4"``) or an iterable of any of these.

    >>> expand_formats("int4, mxint4_128, int4-pc")
    ['int4-pc', 'mxint4-b128']
    """
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in (p.strip() for p in _split_outside_brackets(item)):
            if not part:
                continue
            key = part.lower().replace("_", "-")
            specs = [str(f) for f in format_set(part)] if key in FORMAT_SETS else [str(get_format(part))]
            out += [sp for sp in specs if sp not in out]
    return out


__all__ = ["FORMAT_SETS", "GRAMMAR", "expand_formats", "format_set", "get_format", "list_formats"]
