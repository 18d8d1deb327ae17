"""The fused CPU kernels (qscale.kernels.cpu_fused) give the same bits as the op-by-op torch reference.

Every catalogue format (plus the extra specs of ``test_reference_fast``) on the panel's real widths (576,
896, 1536, 4864, 8960) and odd ones, with random rows and adversarial ones: exact ties at .5 of a step
(scale forced to 1), values on LUT boundaries, subnormal inputs and subnormal scales, signed zeros and
all-zero groups, NaN/Inf (also whole non-finite groups), +-amax, huge values, partial trailing groups;
fp32, bf16 and fp16. Compared as raw bits (signed zeros too; NaN by position) with
``reference.fake_quant_eager`` and the frozen pre-optimisation copy ``tests/kernels/_reference_v1.py``.
"""

from __future__ import annotations

import pytest
import torch

import qscale.kernels.reference as ref
from qscale.formats import MINIFLOATS, get_format
from qscale.formats.core import FloatFormat, Format, IntFormat, LUTFormat, MXFormat
from qscale.kernels import cpu_fused, fake_quant, fake_quant_with_sqnr
from tests.kernels import _reference_v1 as v1
from tests.kernels.test_reference_fast import SPECS, assert_same_bits

pytestmark = pytest.mark.skipif(
    not cpu_fused.available(), reason=f"fused CPU kernels unavailable: {cpu_fused.unavailable_reason()}"
)

REAL_WIDTHS = (576, 896, 1536, 4864, 8960)
ODD_WIDTHS = (1, 5, 33, 100, 200)


def _anchor_and_ties(fmt: Format) -> tuple[float, torch.Tensor]:
    """(a value whose group scale is exactly 1 when it is the group's absmax, fp32 values that are exact
    rounding ties or decision boundaries at scale 1)."""
    if isinstance(fmt, IntFormat):
        q = fmt.qmax
        if fmt.symmetric:
            return float(q), torch.arange(-q, q, dtype=torch.float32) + 0.5
        return float(q), torch.arange(0, q, dtype=torch.float32) + 0.5  # lo = 0, hi = qmax: s = 1, z = 0
    if isinstance(fmt, LUTFormat):
        levels, bounds = ref.lut_tables(fmt)
        mids = (levels[1:] + levels[:-1]) / 2
        return float(levels.abs().max()), torch.cat(
            [bounds, mids, torch.nextafter(bounds, -bounds.abs() - 1)]
        )
    if isinstance(fmt, MXFormat) and fmt.mini is None:  # int elements k / 2^(b-2)
        k = 2 ** (fmt.element_bits - 2)
        grid = torch.arange(0, 2 * k, dtype=torch.float32) / k
    elif isinstance(fmt, FloatFormat | MXFormat):
        assert fmt.mini is not None
        grid = torch.tensor(fmt.mini.grid(), dtype=torch.float32)
    else:
        raise TypeError(type(fmt).__name__)
    mids = (grid[1:] + grid[:-1]) / 2
    # fp: absmax = max_normal gives s = 1; mx: floor(log2(absmax)) = emax_elem gives X = 1
    anchor = float(2.0**fmt.emax_elem) if isinstance(fmt, MXFormat) else float(fmt.mini.max_normal)
    return anchor, torch.cat([mids, -mids])


def _adversarial(fmt: Format, n: int, seed: int) -> torch.Tensor:
    """16 rows of width n (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    span = min(fmt.scale_span(n), n) if not fmt.per_tensor else n
    x = torch.randn(16, n, generator=gen) * 0.02
    x[1] = torch.randn(n, generator=gen) * torch.logspace(-3, 3, n)
    x[2] = torch.randn(n, generator=gen) * 1e-39  # subnormal inputs and scales
    x[3] = torch.randn(n, generator=gen) * 1e-44
    x[4] = torch.randn(n, generator=gen)
    x[4, ::3] = 0.0
    x[4, 1::5] = -0.0
    x[4, :span] = 0.0  # an all +0 group
    if n >= 2 * span:
        x[4, span : 2 * span] = -0.0  # an all -0 group
    x[5] = torch.randn(n, generator=gen)
    x[5, 1::13] = float("nan")
    x[5, 2::17] = float("inf")
    x[5, 3::19] = float("-inf")
    x[5, -1] = float("nan")
    x[6, :] = float("inf")  # groups with no finite element
    x[6, 1::2] = float("nan")
    if n > 4:
        x[6, -1] = 0.5  # ... except in the last one
    anchor, ties = _anchor_and_ties(fmt)
    for r, scale in ((7, 1.0), (8, 2.0**-20), (9, 2.0**40)):
        row = ties[torch.randint(0, ties.numel(), (n,), generator=gen)]
        row[::span] = anchor  # every group (the partial one too) has absmax = anchor: scale exactly `scale`
        x[r] = row * scale
    if isinstance(fmt, IntFormat) and not fmt.symmetric:  # lo = -3, hi = qmax - 3: s = 1, zero point 3
        x[10] = x[7] - 3.0
        x[10, ::span] = -3.0
        x[10, 1::span] = fmt.qmax - 3.0
    else:
        x[10] = -x[7]
    amax = 1.2345678 * 2.0 ** float(torch.randint(-60, 60, (1,), generator=gen))
    x[11] = torch.where(torch.rand(n, generator=gen) < 0.5, amax, -amax)
    x[12] = x[11] * (1 - 2.0**-23)
    x[13] = torch.randn(n, generator=gen) * 1e30
    x[14] = torch.where(torch.rand(n, generator=gen) < 0.5, 3.0e38, -3.0e38)  # hi - lo overflows
    x[15] = torch.rand(n, generator=gen) + 1.0  # all positive: asym lo = 0
    return x


def _eager(fmt: Format, x: torch.Tensor) -> torch.Tensor:
    return ref.fake_quant_eager(fmt, x)


@pytest.mark.parametrize("spec", SPECS)
def test_fused_equals_eager_and_v1_on_real_and_odd_widths(spec: str) -> None:
    fmt = get_format(spec)
    for n in REAL_WIDTHS + ODD_WIDTHS:
        x = _adversarial(fmt, n, seed=n)
        got = ref.fake_quant_reference(fmt, x)
        assert_same_bits(got, _eager(fmt, x))
        assert_same_bits(got, v1.fake_quant_reference(fmt, x))
        assert_same_bits(fake_quant(fmt, x, backend="torch"), got)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_inputs(spec: str, dtype: torch.dtype) -> None:
    fmt = get_format(spec)
    for n in (576, 896, 33):
        x = _adversarial(fmt, n, seed=n + 1).to(dtype)
        assert_same_bits(ref.fake_quant_reference(fmt, x), _eager(fmt, x))


@pytest.mark.parametrize(
    "spec", ["int4-g128", "int4-g128-asym", "fp8-e4m3-pc", "mxfp4-e2m1-b32", "nf4-g64", "cbrt4-g128"]
)
def test_fused_real_weight_shapes_threads_and_layouts(spec: str) -> None:
    """Real shapes big enough to be split across threads, 1-D/3-D inputs and non-contiguous ones."""
    fmt = get_format(spec)
    gen = torch.Generator().manual_seed(7)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for shape in ((896, 4864), (640, 896), (3, 40, 576)):
                x = torch.randn(shape, generator=gen) * 0.02
                assert_same_bits(ref.fake_quant_reference(fmt, x), _eager(fmt, x))
    finally:
        torch.set_num_threads(threads)
    x = torch.randn(300, 896, generator=gen)
    for y in (x.t(), x[:, ::2], x[::3], x.reshape(-1)[: 896 * 17 + 5]):
        assert_same_bits(ref.fake_quant_reference(fmt, y), _eager(fmt, y))


@pytest.mark.parametrize(
    "spec", ["int4-g128", "int8-pt", "int8-pt-mse", "nf4-g64", "fp8-e4m3-raw", "mxint8-b32"]
)
def test_fused_sqnr_sums_equal_eager(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = get_format(spec)
    xs = [_adversarial(fmt, n, seed=3) for n in (576, 896, 33)]
    xs.append(torch.randn(2048, 896, generator=torch.Generator().manual_seed(1)) * 0.02)
    fused = [fake_quant_with_sqnr(fmt, x, backend="torch") for x in xs]
    monkeypatch.setenv(cpu_fused.ENV_VAR, "0")
    assert not cpu_fused.available()
    for x, (q, signal, noise) in zip(xs, fused, strict=True):
        q0, signal0, noise0 = fake_quant_with_sqnr(fmt, x, backend="torch")
        assert_same_bits(q, q0)
        assert_same_bits(signal.reshape(1), signal0.reshape(1))
        assert_same_bits(noise.reshape(1), noise0.reshape(1))


def test_switch_off_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = get_format("nf4-g64")
    x = _adversarial(fmt, 576, seed=5)
    fused = ref.fake_quant_reference(fmt, x)
    monkeypatch.setenv(cpu_fused.ENV_VAR, "0")
    assert not cpu_fused.supports(fmt) and cpu_fused.unavailable_reason() is not None
    assert_same_bits(ref.fake_quant_reference(fmt, x), fused)


def test_coverage() -> None:
    """Everything but the grouped -mse formats runs fused."""
    for spec in SPECS:
        fmt = get_format(spec)
        grouped_mse = isinstance(fmt, IntFormat) and fmt.clip == "mse" and not fmt.per_tensor
        assert cpu_fused.supports(fmt) == (not grouped_mse), spec


def test_minifloat_catalogue_is_covered() -> None:
    for name in MINIFLOATS:
        assert cpu_fused.supports(get_format(f"fp{MINIFLOATS[name].bits}-{name}-pc"))


def test_fresh_build_and_no_compiler_fallback(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library builds from scratch into $QSCALE_CACHE_DIR; without a compiler the eager path runs."""
    monkeypatch.setenv("QSCALE_CACHE_DIR", str(tmp_path))
    cc = cpu_fused._compiler()
    assert cc is not None
    path = cpu_fused._build(cc)
    assert path.parent == tmp_path / "kernels" and path.exists()
    assert cpu_fused._build(cc) == path  # cached
    lib = cpu_fused._open(path)
    fmt = get_format("nf4-g64")
    x = _adversarial(fmt, 896, seed=11)
    k = cpu_fused.kernel_for(fmt)
    assert k is not None
    out = torch.empty_like(x)
    lib.qs_fake_quant_rows(k.addr, x.data_ptr(), out.data_ptr(), x.shape[0], 896, 64, 896, 896)
    assert_same_bits(out, _eager(fmt, x))

    saved_state, saved_lib = dict(cpu_fused._STATE), list(cpu_fused._LIB)
    try:
        cpu_fused._STATE.clear()
        cpu_fused._LIB.clear()
        monkeypatch.setattr(cpu_fused, "_compiler", lambda: None)
        assert not cpu_fused.available() and "no C compiler" in (cpu_fused.unavailable_reason() or "")
        assert_same_bits(ref.fake_quant_reference(fmt, x), out)
        monkeypatch.setenv(cpu_fused.ENV_VAR, "1")
        with pytest.raises(RuntimeError, match="unavailable"):
            cpu_fused.available()
    finally:
        cpu_fused._STATE.clear()
        cpu_fused._STATE.update(saved_state)
        cpu_fused._LIB[:] = saved_lib
