"""Fused CPU fake quantization: each group read once for its scale and once more, from L1, for its output.

The op-by-op torch reference (:func:`qscale.kernels.reference.fake_quant_eager`) makes 4-12 passes over every
weight (abs, max, divide, round, clamp, multiply, ...); a copy makes one. On a CPU those passes, not the
arithmetic, are the cost (3-19x a copy on the panel's weight shapes). The C loops here do the same fp32 IEEE
operations as the reference, in the same order, so the output is bit-identical
(``tests/kernels/test_reference_fast_fused.py`` checks every catalogue format against the eager version and
the frozen v1 on random and adversarial inputs); ``bench/fake_quant.py --cpu-panel-shapes`` measures them.

How the C mirrors the reference, operation by operation (``x`` fp32, ``s`` the group scale):

* reductions: ``amax`` is the integer max of the finite elements' ``|bits|`` (the same value as the float
  max: finite non-negative floats order like their bit patterns); ``lo``/``hi`` the integer min/max of an
  order-preserving key of the finite elements and of 0 (non-finite elements count as 0, as in the reference);
* int: ``s = amax / qmax`` (0 -> 1), ``clamp(rint(x / s), -qmax, qmax) * s``; asymmetric: ``s = (hi - lo) / qmax``
  (0 -> 1), ``z = clamp(rint(-lo / s), 0, qmax)``, ``(clamp(rint(x / s) + z, 0, qmax) - z) * s``;
* fp: ``s = amax / max_normal`` (0 -> 1; ``-raw``: 1), ``y = clamp(x / s, -M, M)``, the minifloat step from
  the exponent bits of ``y``, ``rint(y / step) * step * s`` (``y / step`` as ``y * 2^-k``, the same bits:
  see ``round_mini`` in the C);
* mx: ``X`` built from the exponent bits of ``amax``, ``y = clamp(x * (1 / X), -M, M)``, minifloat as above
  or ``rint(y * k) / k`` for int elements, times ``X``;
* lut: ``s = amax / top`` (0 -> 1), ``y = x / s``, level index = number of boundaries ``<= y`` (AVX-512: a
  binary search with in-register table permutes; otherwise a select per boundary, or a scalar binary search
  for grids of more than 31 boundaries), ``levels[i] * s``; NaN stays NaN.

The clamp the reference skips when it proved it a no-op (``_params_for``) is always applied here: same bits.
``rint`` is round-half-to-even in the default rounding mode (``torch.round`` on fp32 is the same); the clamps
are comparisons that keep NaN and signed zeros like ``torch.clamp``. The file is compiled with
``-ffp-contract=off`` (no FMA contraction) and without fast-math (IEEE division, no reciprocal
approximations, no flush-to-zero), ``-O3 -march=native`` so the loops vectorise (retried without
``-march=native`` if that fails). ``-fno-trapping-math`` only lets the compiler ignore floating-point
exception flags (results are unchanged).

Layout: rows of ``n`` with unit column stride; per row, segments of up to 128 groups: the group reductions,
then the scales of the segment in one (vectorised) loop, then the elements; group sizes 32, 64 and 128 are
compiled with constant trip counts. Big inputs are split by rows over ``torch.get_num_threads()`` Python
threads (the ctypes call releases the GIL). fp16/bf16 inputs go through 1 MiB fp32 chunks converted by
torch, as in the reference.

The shared library is built once per machine with the system C compiler (``$CC``, else ``cc``/``gcc``/
``clang``) into ``$QSCALE_CACHE_DIR/kernels`` (default ``~/.cache/qscale/kernels``; a temporary directory
when that is not writable), keyed by a hash of the source, flags, compiler and CPU; 1-5 s. When no compiler
is found or the build fails, :func:`available` is False and the reference runs op by op (same bits,
slower). ``QSCALE_CPU_FUSED=0`` turns the fused path off, ``=1`` makes a failed build an error.

Formats covered: every int (absmax; ``-mse`` only per tensor, where the search stays in torch and the apply
is fused), fp, mx and lut format at every granularity. Grouped ``-mse`` formats stay on the eager path (their
26-ratio search with float64 error sums dominates; see ``bench/fake_quant.md``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch

from qscale.formats.core import FloatFormat, Format, IntFormat, LUTFormat, MXFormat

ENV_VAR = "QSCALE_CPU_FUSED"
#: Rows per fp16/bf16 conversion chunk and per thread task (fp32 elements; 1 MiB).
CHUNK_ELEMS = 1 << 18
#: Below this many elements the work is not split across threads.
PARALLEL_MIN_ELEMS = 1 << 19

K_INT_SYM, K_INT_ASYM, K_FP, K_MX_FP, K_MX_INT, K_LUT = range(6)

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef struct {
    int32_t kind;       /* 0 int sym, 1 int asym, 2 fp, 3 mx fp, 4 mx int, 5 lut */
    int32_t raw;        /* fp: scale fixed at 1 (granularity none) */
    float qmax;         /* int: qmax; fp / mx: max_normal (the element clamp) */
    float divisor;      /* scale = amax / divisor (int sym, fp, lut); (hi - lo) / divisor (int asym) */
    int32_t step_min;   /* minifloat: (emin + 127) << 23 */
    int32_t step_sub;   /* minifloat: mbits << 23 */
    int32_t emax_elem;  /* mx */
    float mxk;          /* mx int elements: 2^(bits - 2) */
    int32_t nb;         /* lut: boundaries */
    int32_t nb_pad;     /* lut: boundaries padded with NaN to 2^m - 1 (tables hold >= 32 entries) */
    const float *bounds;
    const float *levels;
} qfmt;

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* max |x| over the finite elements (0 when there are none): the integer max of |bits| (finite
   non-negative floats order like their bit patterns) */
static inline float amax_finite(const float *restrict x, int64_t w) {
    const uint32_t *restrict b = (const uint32_t *)x;
    uint32_t m = 0;
    for (int64_t i = 0; i < w; i++) {
        uint32_t a = b[i] & 0x7FFFFFFFu;
        a &= -(uint32_t)(a < 0x7F800000u); /* non-finite: 0 (a select here defeats vectorisation) */
        m = a > m ? a : m;
    }
    return u2f(m);
}

/* min(min x, 0) and max(max x, 0) over the finite elements, through an order-preserving int32 key
   (non-finite elements count as 0, as in the reference) */
static inline void lohi_finite(const float *restrict x, int64_t w, float *lo, float *hi) {
    const int32_t *restrict b = (const int32_t *)x;
    int32_t kmin = 0, kmax = 0;
    for (int64_t i = 0; i < w; i++) {
        int32_t v = b[i];
        int32_t a = v & 0x7FFFFFFF;
        int32_t k = v ^ ((v >> 31) & 0x7FFFFFFF);
        k &= -(int32_t)(a < 0x7F800000);
        kmin = k < kmin ? k : kmin;
        kmax = k > kmax ? k : kmax;
    }
    *lo = u2f((uint32_t)(kmin ^ ((kmin >> 31) & 0x7FFFFFFF)));
    *hi = u2f((uint32_t)(kmax ^ ((kmax >> 31) & 0x7FFFFFFF)));
}

/* torch.clamp: comparisons, so NaN and signed zeros pass through */
static inline float clampf(float y, float lo, float hi) {
    y = y < lo ? lo : y;
    return y > hi ? hi : y;
}

/* round to the minifloat grid: step = 2^(max(e, emin) - mbits) from the exponent bits of y.
   The reference's y / step is computed as y * (1 / step): the biased exponent E of step is in [1, 254], so
   1 / step = 2^(127 - E) is an exact fp32 (bits (254 - E) << 23; 2^-127 for E = 254 would be subnormal, but
   E = 254 needs an E2M1 element and a NaN y, where the 0 this gives still yields NaN), and the correctly
   rounded y * 2^-k is the correctly rounded y / 2^k: the same bits, without a division. */
static inline float round_mini(float y, int32_t step_min, int32_t step_sub) {
    int32_t e = (int32_t)(f2u(y) & 0x7F800000u);
    e = e < step_min ? step_min : e;
    e -= step_sub;
    float st = u2f((uint32_t)e);
    float inv = u2f((uint32_t)(0x7F000000 - e));
    return rintf(y * inv) * st;
}

/* 2^e for e in [-127, 127] from bits (2^-127 is subnormal), branch-free so loops over groups vectorise */
static inline float pow2_e8m0(int32_t e) {
    uint32_t normal = (uint32_t)(e + 127) << 23;
    uint32_t sub = 1u << 22;
    return u2f(e >= -126 ? normal : sub);
}

/* ---- parameters of a run of groups: pass 1 reduces each group, pass 2 (a loop over groups) the scales */

#define GBUF 128

/* s[j], z[j] for the groups of a row segment: full groups of `span` elements, `tail` elements in the last
   one when `has_tail`; for mx s = X and z = 1 / X */
static inline __attribute__((always_inline)) void seg_params(const qfmt *restrict f, const float *restrict x,
                                                             int64_t nfull, int64_t span, int64_t tail,
                                                             float *restrict s, float *restrict z) {
    const int64_t ng = nfull + (tail > 0);
    float a[GBUF], c[GBUF];
    switch (f->kind) {
    case 1:
        for (int64_t j = 0; j < nfull; j++) lohi_finite(x + j * span, span, &c[j], &a[j]);
        if (tail) lohi_finite(x + nfull * span, tail, &c[nfull], &a[nfull]);
        for (int64_t j = 0; j < ng; j++) {
            float sc = (a[j] - c[j]) / f->divisor;
            sc = sc == 0.0f ? 1.0f : sc;
            s[j] = sc;
            z[j] = clampf(rintf(-c[j] / sc), 0.0f, f->qmax);
        }
        return;
    case 3: case 4:
        for (int64_t j = 0; j < nfull; j++) a[j] = amax_finite(x + j * span, span);
        if (tail) a[nfull] = amax_finite(x + nfull * span, tail);
        for (int64_t j = 0; j < ng; j++) {
            int32_t e = (int32_t)((f2u(a[j]) >> 23) & 0xFF) - 127 - f->emax_elem;
            e = e < -127 ? -127 : (e > 127 ? 127 : e);
            float X = pow2_e8m0(e);
            s[j] = X;
            z[j] = 1.0f / X;
        }
        return;
    default:
        if (f->raw) {
            for (int64_t j = 0; j < ng; j++) { s[j] = 1.0f; z[j] = 0.0f; }
            return;
        }
        for (int64_t j = 0; j < nfull; j++) a[j] = amax_finite(x + j * span, span);
        if (tail) a[nfull] = amax_finite(x + nfull * span, tail);
        for (int64_t j = 0; j < ng; j++) {
            float sc = a[j] / f->divisor;
            s[j] = sc == 0.0f ? 1.0f : sc;
            z[j] = 0.0f;
        }
        return;
    }
}

/* ---- element loops */

/* lut: level index = number of boundaries <= y (NaN padding never counts), levels[i] * s; NaN stays NaN.
   Up to 31 boundaries without AVX-512: the boundaries are sorted, so the y >= b[k] that hold are a prefix
   and the last one picks levels[count]: a select per boundary (no gather), a fixed trip count, so the
   element loop vectorises. Larger grids binary-search the NaN-padded 2^m - 1 boundaries. */
#define LUT_FIXED(NB)                                                                                    \
    static void apply_lut_##NB(const float *restrict bd, const float *restrict lv, const float *restrict x, \
                               float *restrict out, int64_t w, float s) {                                 \
        float b[NB], l[NB + 1];                                                                           \
        for (int k = 0; k < NB; k++) b[k] = bd[k];                                                        \
        for (int k = 0; k <= NB; k++) l[k] = lv[k];                                                       \
        for (int64_t i = 0; i < w; i++) {                                                                 \
            float y = x[i] / s;                                                                           \
            float q = l[0];                                                                               \
            for (int k = 0; k < NB; k++) q = y >= b[k] ? l[k + 1] : q;                                    \
            q = q * s;                                                                                    \
            out[i] = y != y ? y : q;                                                                      \
        }                                                                                                 \
    }
LUT_FIXED(1)
LUT_FIXED(3)
LUT_FIXED(7)
LUT_FIXED(15)
LUT_FIXED(31)

static void apply_lut_generic(const qfmt *f, const float *restrict x, float *restrict out, int64_t w, float s) {
    const float *restrict bd = f->bounds;
    const float *restrict lv = f->levels;
    switch (f->nb_pad) {
    case 1: apply_lut_1(bd, lv, x, out, w, s); return;
    case 3: apply_lut_3(bd, lv, x, out, w, s); return;
    case 7: apply_lut_7(bd, lv, x, out, w, s); return;
    case 15: apply_lut_15(bd, lv, x, out, w, s); return;
    case 31: apply_lut_31(bd, lv, x, out, w, s); return;
    default: break;
    }
    const int32_t half = (f->nb_pad + 1) >> 1;
    for (int64_t i = 0; i < w; i++) {
        float y = x[i] / s;
        int32_t pos = 0;
        for (int32_t step = half; step >= 1; step >>= 1) pos += bd[pos + step - 1] <= y ? step : 0;
        float q = lv[pos] * s;
        out[i] = y != y ? y : q;
    }
}

#if defined(__AVX512F__)
/* AVX-512, 7 to 31 boundaries: the same count by a binary search whose boundary and level lookups are
   in-register permutes of the NaN-padded 32-entry tables; y >= b is the ordered compare (NaN: false). */
typedef struct { __m512 b0, b1, l0, l1; } lutv;

static inline __attribute__((always_inline)) void apply_lut_perm(const lutv *t, const float *restrict x,
                                                                 float *restrict out, int64_t w, float s,
                                                                 const int32_t half) {
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < w; i += 16) {
        const __mmask16 live = w - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - i)) - 1u);
        __m512 y = _mm512_div_ps(_mm512_maskz_loadu_ps(live, x + i), vs);
        __m512i pos = _mm512_setzero_si512();
        for (int32_t step = half; step >= 1; step >>= 1) {
            __m512i idx = _mm512_add_epi32(pos, _mm512_set1_epi32(step - 1));
            __mmask16 ge = _mm512_cmp_ps_mask(y, _mm512_permutex2var_ps(t->b0, idx, t->b1), _CMP_GE_OQ);
            pos = _mm512_mask_add_epi32(pos, ge, pos, _mm512_set1_epi32(step));
        }
        __m512 q = _mm512_mul_ps(_mm512_permutex2var_ps(t->l0, pos, t->l1), vs);
        q = _mm512_mask_mov_ps(q, _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), y);
        _mm512_mask_storeu_ps(out + i, live, q);
    }
}
#endif

static inline __attribute__((always_inline)) void apply_group(const qfmt *restrict f, const float *restrict x,
                                                              float *restrict out, int64_t w, float s, float z) {
    const float M = f->qmax;
    switch (f->kind) {
    case 0:
        for (int64_t i = 0; i < w; i++) out[i] = clampf(rintf(x[i] / s), -M, M) * s;
        return;
    case 1:
        for (int64_t i = 0; i < w; i++) out[i] = (clampf(rintf(x[i] / s) + z, 0.0f, M) - z) * s;
        return;
    case 2: {
        const int32_t a = f->step_min, b = f->step_sub;
        for (int64_t i = 0; i < w; i++) out[i] = round_mini(clampf(x[i] / s, -M, M), a, b) * s;
        return;
    }
    case 3: {
        const int32_t a = f->step_min, b = f->step_sub;
        for (int64_t i = 0; i < w; i++) out[i] = round_mini(clampf(x[i] * z, -M, M), a, b) * s;
        return;
    }
    case 4: {
        const float k = f->mxk;
        for (int64_t i = 0; i < w; i++) out[i] = (rintf(clampf(x[i] * z, -M, M) * k) / k) * s;
        return;
    }
    default:
        apply_lut_generic(f, x, out, w, s);
        return;
    }
}

/* ---- rows: per segment of up to GBUF groups, the parameters, then the elements (still in L1) */

#define SEG_LOOP(APPLY_FULL, APPLY_TAIL)                                                                 \
    for (int64_t r = 0; r < rows; r++) {                                                                 \
        const float *xr = x + r * x_stride;                                                              \
        float *orow = out + r * out_stride;                                                              \
        for (int64_t g0 = 0; g0 < ng; g0 += GBUF) {                                                      \
            const int64_t g1 = g0 + GBUF < ng ? g0 + GBUF : ng;                                          \
            const int64_t full1 = g1 < nfull ? g1 : nfull;                                               \
            const int64_t seg_tail = g1 > nfull ? tail : 0;                                              \
            const float *xs = xr + g0 * span;                                                            \
            float *os = orow + g0 * span;                                                                \
            seg_params(f, xs, full1 - g0, span, seg_tail, s, z);                                         \
            for (int64_t j = 0; j < full1 - g0; j++) { APPLY_FULL; }                                      \
            if (seg_tail) { const int64_t j = full1 - g0; APPLY_TAIL; }                                  \
        }                                                                                                \
    }

static inline __attribute__((always_inline)) void do_rows(const qfmt *restrict f, const float *x, float *out,
                                                          int64_t rows, int64_t n, const int64_t span,
                                                          int64_t x_stride, int64_t out_stride) {
    const int64_t nfull = n / span, tail = n - nfull * span, ng = nfull + (tail > 0);
    float s[GBUF], z[GBUF];
#if defined(__AVX512F__)
    if (f->kind == 5 && f->nb_pad >= 7 && f->nb_pad <= 31) {
        const lutv t = {_mm512_loadu_ps(f->bounds), _mm512_loadu_ps(f->bounds + 16),
                        _mm512_loadu_ps(f->levels), _mm512_loadu_ps(f->levels + 16)};
        const int32_t half = (f->nb_pad + 1) >> 1;
#define LUT_ROWS(H)                                                                                      \
        SEG_LOOP(apply_lut_perm(&t, xs + j * span, os + j * span, span, s[j], H),                         \
                 apply_lut_perm(&t, xs + j * span, os + j * span, tail, s[j], H))
        if (half == 8) { LUT_ROWS(8) } else if (half == 4) { LUT_ROWS(4) } else { LUT_ROWS(16) }
#undef LUT_ROWS
        return;
    }
#endif
    SEG_LOOP(apply_group(f, xs + j * span, os + j * span, span, s[j], z[j]),
             apply_group(f, xs + j * span, os + j * span, tail, s[j], z[j]))
}

/* rows x n (row strides in elements), one scale per span columns, the partial trailing group its own */
void qs_fake_quant_rows(const qfmt *f, const float *x, float *out, int64_t rows, int64_t n, int64_t span,
                        int64_t x_stride, int64_t out_stride) {
    switch (span) {  /* the common group sizes with constant trip counts (unrolled loops) */
    case 32: do_rows(f, x, out, rows, n, 32, x_stride, out_stride); return;
    case 64: do_rows(f, x, out, rows, n, 64, x_stride, out_stride); return;
    case 128: do_rows(f, x, out, rows, n, 128, x_stride, out_stride); return;
    default: do_rows(f, x, out, rows, n, span, x_stride, out_stride); return;
    }
}

/* one group's parameters over count elements (per-tensor formats): sz = (s, z) */
void qs_params(const qfmt *f, const float *x, int64_t count, float *sz) {
    float s[GBUF], z[GBUF];
    seg_params(f, x, 1, count, 0, s, z);
    sz[0] = s[0];
    sz[1] = z[0];
}

/* fixed parameters (s, z: as qs_params returns them) over count elements */
void qs_apply(const qfmt *f, const float *x, float *out, int64_t count, float s, float z) {
    apply_group(f, x, out, count, s, z);
}

/* the float64 squares of x and of q - x (the terms of fake_quant_with_sqnr's sums) */
void qs_sq_terms(const float *restrict x, const float *restrict q, double *restrict xx, double *restrict dd,
                 int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        double xd = (double)x[i];
        double d = (double)q[i] - xd;
        xx[i] = xd * xd;
        dd[i] = d * d;
    }
}
"""

_FLAGS = (
    "-O3",
    "-march=native",
    "-std=c11",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-fno-strict-aliasing",
    "-fPIC",
    "-shared",
)


class _QFmt(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("raw", ctypes.c_int32),
        ("qmax", ctypes.c_float),
        ("divisor", ctypes.c_float),
        ("step_min", ctypes.c_int32),
        ("step_sub", ctypes.c_int32),
        ("emax_elem", ctypes.c_int32),
        ("mxk", ctypes.c_float),
        ("nb", ctypes.c_int32),
        ("nb_pad", ctypes.c_int32),
        ("bounds", ctypes.c_void_p),
        ("levels", ctypes.c_void_p),
    ]


_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "lib": the loaded library or None (tried), "error": why not
_LIB: list[ctypes.CDLL] = []  # the loaded library, for the fast path of _load


def _mode() -> str:
    v = os.environ.get(ENV_VAR, "auto").strip().lower()
    if v in ("0", "off", "false", "no", "eager"):
        return "off"
    if v in ("1", "on", "true", "yes", "fused"):
        return "on"
    return "auto"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc and shutil.which(cc.split()[0]):
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and flags (Linux), else the platform."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.platform() + platform.processor()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "vendor_id"))]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    root = os.environ.get("QSCALE_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "qscale"
    return base / "kernels"


def _build(cc: str) -> Path:
    version = subprocess.run(
        [*cc.split(), "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    key = hashlib.sha256("\0".join([_SOURCE, " ".join(_FLAGS), cc, version, _cpu_id()]).encode()).hexdigest()
    name = f"qscale_cpu_fused_{key[:16]}.so"
    for d in (
        _cache_dir(),
        Path(tempfile.gettempdir()) / f"qscale-kernels-{getattr(os, 'getuid', lambda: 0)()}",
    ):
        lib = d / name
        if lib.exists():
            return lib
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        src = d / f"{name}.{os.getpid()}.c"
        tmp = d / f"{name}.{os.getpid()}.tmp"
        try:
            src.write_text(_SOURCE)
            for flags in (_FLAGS, tuple(f for f in _FLAGS if f != "-march=native")):
                res = subprocess.run(
                    [*cc.split(), *flags, "-o", str(tmp), str(src), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=False,
                )
                if res.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{cc} failed building the fused CPU kernels:\n{res.stderr[-2000:]}")
            os.replace(tmp, lib)  # atomic: concurrent builders race harmlessly
            return lib
        except OSError:
            continue
        finally:
            for p in (src, tmp):
                p.unlink(missing_ok=True)
    raise RuntimeError("no writable directory for the fused CPU kernels")


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.qs_fake_quant_rows.argtypes = [vp, vp, vp, i64, i64, i64, i64, i64]
    lib.qs_fake_quant_rows.restype = None
    lib.qs_params.argtypes = [vp, vp, i64, vp]
    lib.qs_params.restype = None
    lib.qs_apply.argtypes = [vp, vp, vp, i64, f32, f32]
    lib.qs_apply.restype = None
    lib.qs_sq_terms.argtypes = [vp, vp, vp, vp, i64]
    lib.qs_sq_terms.restype = None
    return lib


def _load() -> ctypes.CDLL | None:
    """The compiled library, built on first use (None when unavailable or turned off by the env var)."""
    if ENV_VAR in os.environ:
        if _mode() == "off":
            return None
    elif _LIB:
        return _LIB[0]
    lib = _STATE.get("lib", False)
    if lib is not False:  # loaded, or tried and failed
        if lib is None and _mode() == "on":
            raise RuntimeError(
                f"{ENV_VAR}=1 but the fused CPU kernels are unavailable: {_STATE.get('error')}"
            )
        return lib  # type: ignore[return-value]
    with _LOCK:
        if "lib" not in _STATE:
            try:
                cc = _compiler()
                if cc is None:
                    raise RuntimeError("no C compiler found (set $CC)")
                _STATE["lib"] = _open(_build(cc))
                _LIB.append(_STATE["lib"])
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                _STATE["lib"], _STATE["error"] = None, str(e)
    return _load()


def available() -> bool:
    """True when the fused CPU kernels are built (or can be) and not turned off by ``$QSCALE_CPU_FUSED``."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True or was not asked yet)."""
    if _mode() == "off":
        return f"turned off by ${ENV_VAR}"
    return _STATE.get("error")  # type: ignore[return-value]


class _Kernel(NamedTuple):
    """A format as the C side sees it: the struct's address, the struct, the LUT tables it points into."""

    addr: int
    struct: _QFmt
    tables: tuple[torch.Tensor, ...]


@functools.lru_cache(maxsize=256)
def _spec(fmt: Format) -> _Kernel | None:
    """The C description of ``fmt``, or None when the fused path does not cover it."""
    st = _QFmt()
    tables: tuple[torch.Tensor, ...] = ()
    if isinstance(fmt, IntFormat):
        if fmt.clip != "absmax" and not fmt.per_tensor:
            return None
        st.kind = K_INT_SYM if fmt.symmetric else K_INT_ASYM
        st.qmax = st.divisor = float(fmt.qmax)
    elif isinstance(fmt, FloatFormat):
        m = fmt.mini
        st.kind, st.raw = K_FP, int(fmt.granularity == "none")
        st.qmax = st.divisor = float(m.max_normal)
        st.step_min, st.step_sub = (m.emin + 127) << 23, m.mbits << 23
    elif isinstance(fmt, MXFormat):
        st.qmax = float(fmt.max_normal)
        st.emax_elem = fmt.emax_elem
        if fmt.mini is not None:
            st.kind = K_MX_FP
            st.step_min, st.step_sub = (fmt.mini.emin + 127) << 23, fmt.mini.mbits << 23
        else:
            st.kind = K_MX_INT
            st.mxk = float(2 ** (fmt.element_bits - 2))
    elif isinstance(fmt, LUTFormat):
        from qscale.kernels.reference import _lut_tables_cpu

        levels, bounds = _lut_tables_cpu(fmt)
        st.kind = K_LUT
        st.divisor = torch.tensor(max(abs(v) for v in fmt.grid), dtype=torch.float32).item()
        nb = bounds.numel()
        pad = 1
        while pad - 1 < nb:
            pad <<= 1
        # NaN-padded boundaries, levels padded with the top one (never chosen): >= 32 entries each, for the
        # AVX-512 permutes (which read 32); the other paths read nb_pad and nb_pad + 1
        padded = torch.full((max(pad - 1, 32),), float("nan"), dtype=torch.float32)
        padded[:nb] = bounds
        lv = torch.cat([levels, levels[-1:].expand(max(pad, 32) - nb - 1)])
        st.nb, st.nb_pad = nb, pad - 1
        st.bounds, st.levels = padded.data_ptr(), lv.data_ptr()
        tables = (padded, lv)
    else:
        return None
    return _Kernel(ctypes.addressof(st), st, tables)


def kernel_for(fmt: Format) -> _Kernel | None:
    """The fused kernel of ``fmt`` when the library is available and covers the format, else None."""
    k = _spec(fmt)
    return k if k is not None and _load() is not None else None


def supports(fmt: Format) -> bool:
    """True when :func:`fake_quant_fused` covers ``fmt`` (and the kernels are available)."""
    return kernel_for(fmt) is not None


_POOL: dict[str, object] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` worker threads, made again after a fork (a child inherits no threads)."""
    pool = _POOL.get("pool")
    if pool is None or _POOL.get("pid") != os.getpid() or _POOL.get("n") != n:
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="qscale-fq")
        _POOL.update(pool=pool, pid=os.getpid(), n=n)
    return pool  # type: ignore[return-value]


def _run_rows(
    lib: ctypes.CDLL, k: _Kernel, xp: int, op: int, rows: int, n: int, span: int, xs: int, os_: int
) -> None:
    """Fake-quantize ``rows`` fp32 rows of ``n`` at address ``xp`` (row stride ``xs`` elements, unit column
    stride) into ``op`` (row stride ``os_``). Large inputs are split by rows over ``torch.get_num_threads()``
    threads (ctypes drops the GIL)."""
    threads = torch.get_num_threads()
    if threads <= 1 or rows < 2 or rows * n < PARALLEL_MIN_ELEMS:
        lib.qs_fake_quant_rows(k.addr, xp, op, rows, n, span, xs, os_)
        return
    per = -(-rows // threads)

    def part(r0: int) -> None:
        r1 = min(rows, r0 + per)
        lib.qs_fake_quant_rows(k.addr, xp + 4 * r0 * xs, op + 4 * r0 * os_, r1 - r0, n, span, xs, os_)

    list(_pool(threads).map(part, range(0, rows, per)))


def _rows(lib: ctypes.CDLL, k: _Kernel, x2: torch.Tensor, out2: torch.Tensor, span: int) -> None:
    rows, n = x2.shape
    _run_rows(lib, k, x2.data_ptr(), out2.data_ptr(), rows, n, span, x2.stride(0), out2.stride(0))


def fake_quant_fused(
    fmt: Format, x: torch.Tensor, params: tuple[float, float] | None = None, kernel: _Kernel | None = None
) -> torch.Tensor:
    """Quantize-dequantize a CPU float tensor ``x`` (any shape, fp32/bf16/fp16) bit-identically to the
    eager reference. ``params`` (per-tensor formats only): a fixed ``(scale, zero)`` as the reference
    computed them (the ``-mse`` search); otherwise the C code computes them. ``kernel``: from
    :func:`kernel_for` (looked up when omitted)."""
    k = kernel if kernel is not None else kernel_for(fmt)
    lib = _LIB[0] if kernel is not None and _LIB else _load()  # a kernel comes from a loaded library
    if k is None or lib is None or x.device.type != "cpu":
        raise ValueError(f"the fused CPU kernels do not cover {fmt} on {x.device}: {unavailable_reason()}")
    dtype = x.dtype
    if fmt.per_tensor:
        xf = x.reshape(-1).to(torch.float32).contiguous()
        if params is None:
            sz = (ctypes.c_float * 2)()
            lib.qs_params(k.addr, xf.data_ptr(), xf.numel(), ctypes.addressof(sz))
            s, z = sz[0], sz[1]
        else:
            s, z = params
        out = torch.empty_like(xf)
        lib.qs_apply(k.addr, xf.data_ptr(), out.data_ptr(), xf.numel(), s, z)
        return out.reshape(x.shape).to(dtype)
    n = x.shape[-1] if x.dim() else 1
    span = min(fmt.scale_span(n), n)
    if dtype == torch.float32:
        if x.is_contiguous():
            out = torch.empty_like(x)  # contiguous, like x
            _run_rows(lib, k, x.data_ptr(), out.data_ptr(), x.numel() // n, n, span, n, n)
            return out
        x2 = x.reshape(-1, n)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        out2 = torch.empty(x2.shape, dtype=torch.float32)
        _rows(lib, k, x2, out2, span)
        return out2.view(x.shape)
    x2 = x.reshape(-1, n)
    out2 = torch.empty(x2.shape, dtype=dtype)
    rows = max(1, CHUNK_ELEMS // n)
    buf_in = torch.empty((min(rows, x2.shape[0]), n), dtype=torch.float32)
    buf_out = torch.empty_like(buf_in)
    for r0 in range(0, x2.shape[0], rows):
        xc = x2[r0 : r0 + rows]
        bi, bo = buf_in[: xc.shape[0]], buf_out[: xc.shape[0]]
        bi.copy_(xc)
        _rows(lib, k, bi, bo, span)
        out2[r0 : r0 + rows].copy_(bo)
    return out2.view(x.shape)


def sq_terms(x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``x * x`` and ``(q - x) ** 2`` of contiguous fp32 ``x``, ``q`` (what the SQNR sums add up)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernels are unavailable: {unavailable_reason()}")
    assert x.dtype == q.dtype == torch.float32 and x.is_contiguous() and q.is_contiguous()
    xx = torch.empty(x.shape, dtype=torch.float64)
    dd = torch.empty(x.shape, dtype=torch.float64)
    lib.qs_sq_terms(x.data_ptr(), q.data_ptr(), xx.data_ptr(), dd.data_ptr(), x.numel())
    return xx, dd


__all__ = [
    "ENV_VAR",
    "available",
    "fake_quant_fused",
    "kernel_for",
    "sq_terms",
    "supports",
    "unavailable_reason",
]
