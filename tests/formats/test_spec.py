"""Spec parser, catalogue, named sets, JSON round trip, bits accounting, format-level validation."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest

from qscale.formats import (
    FORMAT_SETS,
    Format,
    FormatError,
    IntFormat,
    LUTFormat,
    MXFormat,
    format_set,
    get_format,
    list_formats,
    normal_float_levels,
)
from qscale.formats.core import cbrt_boundaries, cbrt_levels


def test_catalogue_size_and_uniqueness() -> None:
    specs = list_formats()
    assert len(specs) >= 40
    assert len(set(specs)) == len(specs)
    assert {get_format(s).family for s in specs} == {"int", "fp", "mx", "lut"}


@pytest.mark.parametrize("spec", list_formats())
def test_catalogue_round_trip(spec: str) -> None:
    fmt = get_format(spec)
    assert str(fmt) == spec  # catalogue entries are canonical
    assert get_format(str(fmt)) == fmt
    d = json.loads(json.dumps(fmt.to_dict()))
    assert Format.from_dict(d) == fmt
    assert hash(Format.from_dict(d)) == hash(fmt)
    assert d["spec"] == spec and d["family"] == fmt.family
    assert isinstance(fmt.description, str) and fmt.description
    with pytest.raises(AttributeError):
        fmt.granularity = "tensor"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("int4", "int4-pc"),
        ("INT4", "int4-pc"),
        ("int4-g128", "int4-g128"),
        ("int4_g128", "int4-g128"),
        ("int4-g128-asym", "int4-g128-asym"),
        ("int4-g128-sym", "int4-g128"),
        ("int4-g128-mse-asym", "int4-g128-asym-mse"),
        ("int8-pt", "int8-pt"),
        ("int8-per-tensor", "int8-pt"),
        ("int8-per-channel", "int8-pc"),
        ("int8-pc", "int8-pc"),
        ("int4-g128-mse", "int4-g128-mse"),
        ("fp8", "fp8-e4m3-pc"),
        ("fp8-e4m3", "fp8-e4m3-pc"),
        ("fp8-e4m3fn", "fp8-e4m3-pc"),
        ("fp8-e5m2", "fp8-e5m2-pc"),
        ("fp8-e4m3-raw", "fp8-e4m3-raw"),
        ("fp6-e3m2", "fp6-e3m2-pc"),
        ("fp4", "fp4-e2m1-pc"),
        ("fp4-e2m1-g32", "fp4-e2m1-g32"),
        ("mxfp4", "mxfp4-e2m1-b32"),
        ("mxfp6-e3m2", "mxfp6-e3m2-b32"),
        ("mxfp8-e4m3", "mxfp8-e4m3-b32"),
        ("mxfp8", "mxfp8-e4m3-b32"),
        ("mxint8", "mxint8-b32"),
        ("mxint4-b128", "mxint4-b128"),
        ("mxint4_128", "mxint4-b128"),
        ("mxfp4-64", "mxfp4-e2m1-b64"),
        ("nf4", "nf4-g64"),
        ("nf3", "nf3-g64"),
        ("cbrt4", "cbrt4-g128"),
        ("cbrt4-g128", "cbrt4-g128"),
        (" lut[-1, -0.5, 0, 0.5, 1] ", "lut[-1.0,-0.5,0.0,0.5,1.0]-g64"),
        ("lut[-1,0,1]-g32", "lut[-1.0,0.0,1.0]-g32"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert str(get_format(alias)) == canonical
    assert get_format(alias) == get_format(canonical)


@pytest.mark.parametrize(
    ("spec", "bits"),
    [
        ("int4-g128", 4.125),
        ("int4-g128-asym", 4.25),
        ("int4-pc", 4.0),
        ("int8-pt", 8.0),
        ("mxfp4", 4.25),
        ("mxint4-b128", 4.0625),
        ("mxfp8-e4m3", 8.25),
        ("nf4", 4.25),
        ("nf3-g128", 3.125),
        ("fp4-e2m1-g32", 4.5),
        ("fp8-e4m3-raw", 8.0),
        ("cbrt4-g128", 4.125),
        ("lut[-1,-0.5,0,0.5,1]-g64", 3.25),
    ],
)
def test_bits_per_element(spec: str, bits: float) -> None:
    assert get_format(spec).bits_per_element == bits


@pytest.mark.parametrize(
    ("spec", "n_cols", "bits"),
    [
        # worked by hand: element bits + scale bits * ceil(n / G) / n
        ("int4-g128", 576, 4 + 16 * 5 / 576),  # 4 x 128 + 64: 5 scales -> 4.1389
        ("int4-g128", 4096, 4.125),  # divides: the nominal figure
        ("int4-g128", 896, 4.125),  # 7 x 128
        ("int4-g128", 100, 4 + 16 / 100),  # one partial group
        ("int4-g128", 1, 20.0),  # a single element carries a whole scale
        ("int4-g128-asym", 576, 4 + 32 * 5 / 576),  # scale + zero point per group
        ("int3-g64", 4864, 3.25),  # 76 x 64
        ("int4-g32", 33, 4 + 16 * 2 / 33),
        ("mxfp4", 100, 4 + 8 * 4 / 100),  # 3 x 32 + 4: 4 E8M0 scales -> 4.32
        ("mxint4-b128", 576, 4 + 8 * 5 / 576),
        ("mxfp8-e4m3", 8960, 8.25),  # 280 x 32
        ("nf4-g64", 576, 4.25),  # 9 x 64
        ("nf4-g128", 576, 4 + 16 * 5 / 576),
        ("cbrt4-g128", 1536, 4.125),
        ("fp4-e2m1-g128", 576, 4 + 16 * 5 / 576),
        ("int8-pc", 576, 8.0),  # per-channel / per-tensor / raw: no per-group overhead
        ("int8-pt", 33, 8.0),
        ("fp8-e4m3-raw", 576, 8.0),
    ],
)
def test_bits_per_element_for(spec: str, n_cols: int, bits: float) -> None:
    assert get_format(spec).bits_per_element_for(n_cols) == pytest.approx(bits, rel=1e-15)


def test_bits_per_element_for_worked_example_and_errors() -> None:
    assert round(get_format("int4-g128").bits_per_element_for(576), 4) == 4.1389
    for spec in list_formats():  # equal to the nominal figure whenever the group divides the row
        f = get_format(spec)
        assert f.bits_per_element_for(3 * 128 * 5) == pytest.approx(f.bits_per_element, rel=1e-15)
        assert f.bits_per_element_for(576) >= f.bits_per_element
    for bad in (0, -3, 2.5, True):
        with pytest.raises(FormatError, match="positive integer"):
            get_format("int4-g128").bits_per_element_for(bad)


def test_format_attributes() -> None:
    f = get_format("int4-g128")
    assert (f.family, f.element_bits, f.per_tensor, f.scale_span(4096), f.block) == (
        "int",
        4,
        False,
        128,
        128,
    )
    assert get_format("int8-pt").per_tensor and get_format("int8-pt").scale_span(300) == 300
    assert get_format("int8-pc").scale_span(300) == 300 and not get_format("int8-pc").per_tensor
    assert get_format("fp8-e4m3-raw").per_tensor
    m = get_format("mxint8")
    assert (
        isinstance(m, MXFormat) and m.max_normal == 2 - 2**-6 and m.emax_elem == 0 and m.scale_span(64) == 32
    )
    assert get_format("mxfp4").emax_elem == 2 and get_format("mxfp8-e5m2").emax_elem == 15
    assert get_format("mxfp6-e2m3").max_normal == 7.5
    i = get_format("int4-g128-asym")
    assert isinstance(i, IntFormat) and i.qmax == 15 and get_format("int4").qmax == 7


def test_scale_span_is_the_group_size_for_any_row_length() -> None:
    """A group that does not divide the row leaves a partial trailing group (no error any more)."""
    assert get_format("int4-g128").scale_span(100) == 128  # one partial group of 100
    assert get_format("int4-g128").scale_span(576) == 128  # 4 x 128 + a partial group of 64
    assert get_format("mxfp4").scale_span(48) == 32  # one block of 32 + a partial block of 16
    assert get_format("int4-g128").groups_per_row(576) == 5 and get_format("mxfp4").groups_per_row(48) == 2
    assert get_format("int4-g128").groups_per_row(1) == 1 and get_format("int8-pc").groups_per_row(577) == 1
    with pytest.raises(FormatError, match="positive integer"):
        get_format("int4-g128").groups_per_row(0)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("int33", "int3"),
        ("int1", "2..8"),
        ("int9-g128", "2..8"),
        ("int4-g0", "positive"),
        ("int4-gg", "unexpected field 'gg'"),
        ("fp6", "fp6-e3m2, fp6-e2m3"),
        ("fp8-e3m2", "has 6 bits"),
        ("fp7", "no 7-bit minifloat"),
        ("mxfp4-b16", "not one of (32, 64, 128)"),
        ("mxint9", "2..8"),
        ("nf4-raw", "unexpected field"),
        ("nf9", "2..8"),
        ("lut[1,0]", "strictly increasing"),
        ("lut[a,b]", "must be numbers"),
        ("lut[0,0.5]x", "unexpected"),
        ("bf16", "unknown format name"),
        ("mfxp4", "mxfp4"),
        ("", "empty"),
    ],
)
def test_bad_specs_raise_with_help(bad: str, needle: str) -> None:
    with pytest.raises(FormatError) as info:
        get_format(bad)
    msg = str(info.value)
    assert needle in msg
    assert "Grammar:" in msg
    assert isinstance(info.value, ValueError)


def test_did_you_mean() -> None:
    with pytest.raises(FormatError, match=r"did you mean .*int4-g128"):
        get_format("itn4-g128")
    with pytest.raises(FormatError, match=r"did you mean .*nf4"):
        get_format("nf44")


def test_get_format_passes_formats_through_and_rejects_other_types() -> None:
    f = get_format("nf4")
    assert get_format(f) is f
    with pytest.raises(FormatError, match="string or a Format"):
        get_format(4)  # type: ignore[arg-type]


def test_dataclass_validation() -> None:
    with pytest.raises(FormatError, match="group_size must be 0"):
        IntFormat(4, "channel", 128)
    with pytest.raises(FormatError, match="granularity 'none' is not valid"):
        IntFormat(4, "none")
    with pytest.raises(FormatError, match="clip"):
        IntFormat(4, clip="percentile")
    with pytest.raises(FormatError, match="block size"):
        MXFormat("e2m1", 16)
    with pytest.raises(FormatError, match="levels are derived"):
        LUTFormat("nf", 4, (0.0, 1.0))
    with pytest.raises(FormatError, match="unknown format family"):
        Format.from_dict({"family": "posit"})
    with pytest.raises(FormatError, match="disagrees"):
        Format.from_dict({**get_format("int4").to_dict(), "spec": "int8-pc"})


def test_format_sets() -> None:
    assert {str(f) for f in format_set("all")} == set(list_formats())
    d = format_set("default")
    assert 6 <= len(d) <= 10 and len({f.family for f in d}) == 4
    four = format_set("all-4bit")
    assert four and all(f.element_bits == 4 for f in four)
    assert {f.family for f in four} == {"int", "fp", "mx", "lut"}
    assert all(f.element_bits == 8 for f in format_set("all-8bit"))
    assert all(f.family == "mx" for f in format_set("all-mx")) and format_set("mx") == format_set("all-mx")
    assert all(f.family == "int" for f in format_set("int"))
    for name in FORMAT_SETS:
        assert format_set(name)
    with pytest.raises(FormatError, match="did you mean all-4bit"):
        format_set("all-4bits")


def test_normal_float_grid() -> None:
    nf4 = normal_float_levels(4)
    # QLoRA's published NF4 table (bitsandbytes), to 7 decimals
    published = [-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                 0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0]  # fmt: skip
    assert len(nf4) == 16 and max(abs(a - b) for a, b in zip(nf4, published, strict=True)) < 5e-7
    # NF3 from its definition, recomputed: offset = (1 - 1/14 + 1 - 1/16) / 2, 4 positive, 3 negative
    off = 0.5 * ((1 - 1 / 14) + (1 - 1 / 16))
    ppf = NormalDist().inv_cdf
    top = ppf(off)
    pos = [ppf(off - (off - 0.5) * i / 4) / top for i in range(4)]
    neg = [-ppf(off - (off - 0.5) * i / 3) / top for i in range(3)]
    assert normal_float_levels(3) == pytest.approx(sorted(pos + neg + [0.0]), abs=1e-12)
    assert (
        normal_float_levels(3)[0] == -1.0
        and normal_float_levels(3)[-1] == 1.0
        and 0.0 in normal_float_levels(3)
    )


def test_cbrt_grid() -> None:
    lv = cbrt_levels(4)
    assert len(lv) == 15 and lv[7] == 0.0 and lv[-1] == 1.0 and lv[8] == pytest.approx(1 / 343)
    b = cbrt_boundaries(4)
    assert len(b) == 14 and b[7] == pytest.approx((0.5 / 7) ** 3) and b[8] == pytest.approx((1.5 / 7) ** 3)
    # the boundary is the image of the companded midpoint: cbrt(b) * 7 = k + 1/2
    assert all(math.isclose(math.copysign(abs(v) ** (1 / 3), v) * 7 % 1, 0.5, abs_tol=1e-9) for v in b)
    assert get_format("cbrt4").element_bits == 4 and get_format("nf3").element_bits == 3
