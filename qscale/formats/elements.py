"""Element encodings: the minifloats (sign, exponent, mantissa) that fp and MX formats round to.

One source of truth for their constants. For an element with ``ebits`` exponent bits, ``mbits``
mantissa bits and exponent ``bias``:

* normal values are ``(1 + m / 2**mbits) * 2**e`` for ``e`` in ``[emin, emax]``, ``emin = 1 - bias``;
* subnormals are ``m / 2**mbits * 2**emin`` (the step of the lowest binade continues down to zero);
* ``max_normal`` is the largest finite value (the "fn" encodings give up infinities and, for E4M3,
  the all-ones mantissa of the top exponent, so their top binade is shorter than IEEE's).

Worked numbers (max normal, smallest subnormal):

=======  =====  =====  ====  ===========  ==========  ====  ====
element  ebits  mbits  bias  max_normal   min subnorm  emax  emin
=======  =====  =====  ====  ===========  ==========  ====  ====
E4M3fn   4      3      7     448 = 1.75*2^8    2^-9     8    -6
E5M2     5      2      15    57344 = 1.75*2^15 2^-16    15   -14
E3M2fn   3      2      3     28 = 1.75*2^4     2^-4     4    -2
E2M3fn   2      3      1     7.5 = 1.875*2^2   2^-3     2    0
E2M1fn   2      1      1     6 = 1.5*2^2       2^-1     2    0
=======  =====  =====  ====  ===========  ==========  ====  ====
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class MiniFloat:
    """A sign/exponent/mantissa element encoding with saturating round-to-nearest-even.

    >>> E2M1.emax, E2M1.emin, E2M1.min_subnormal, E2M1.bits
    (2, 0, 0.5, 4)
    """

    name: str
    ebits: int
    mbits: int
    bias: int
    max_normal: float

    @property
    def bits(self) -> int:
        """Storage bits: 1 sign + exponent + mantissa."""
        return 1 + self.ebits + self.mbits

    @property
    def emax(self) -> int:
        """Unbiased exponent of the max normal value, floor(log2(max_normal))."""
        return math.floor(math.log2(self.max_normal))

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal value, 1 - bias (subnormals share its step)."""
        return 1 - self.bias

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2**(emin - mbits)."""
        return 2.0 ** (self.emin - self.mbits)

    def grid(self) -> list[float]:
        """Every non-negative finite value, ascending (for tests and docs; the kernels never use it)."""
        out = [m * 2.0 ** (self.emin - self.mbits) for m in range(2**self.mbits)]
        e = self.emin
        while e <= self.emax:
            for m in range(2**self.mbits):
                v = (1 + m / 2**self.mbits) * 2.0**e
                if v <= self.max_normal:
                    out.append(v)
            e += 1
        return out


E4M3 = MiniFloat("e4m3", ebits=4, mbits=3, bias=7, max_normal=448.0)
E5M2 = MiniFloat("e5m2", ebits=5, mbits=2, bias=15, max_normal=57344.0)
E3M2 = MiniFloat("e3m2", ebits=3, mbits=2, bias=3, max_normal=28.0)
E2M3 = MiniFloat("e2m3", ebits=2, mbits=3, bias=1, max_normal=7.5)
E2M1 = MiniFloat("e2m1", ebits=2, mbits=1, bias=1, max_normal=6.0)

#: name -> element, read-only.
MINIFLOATS: MappingProxyType[str, MiniFloat] = MappingProxyType(
    {m.name: m for m in (E4M3, E5M2, E3M2, E2M3, E2M1)}
)

#: element bits -> the default element for that width (fp6 has no default: e3m2 and e2m3 are both common).
DEFAULT_ELEMENT: MappingProxyType[int, str] = MappingProxyType({8: "e4m3", 4: "e2m1"})

#: E8M0 (the MX shared scale): exponent-only, bias 127, finite range 2^-127 .. 2^127 (0xFF is NaN).
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127
