"""Compile the fake-quant kernels ahead of time for an NVIDIA target (no GPU needed) and audit the PTX.

Bit-exactness on the GPU rests on what the compiler emits: IEEE division (``div.rn.f32``, not Triton's
default approximate ``div.full.f32``), no multiply-add contraction (``fma``), no flush-to-zero (``.ftz``;
subnormal scales and elements must survive), round-to-nearest-even bf16 stores, and, for bandwidth,
vectorised 16-byte loads. This module compiles a format's kernel with the same constexprs and options
as a real launch and reports those facts as JSON::

    python -m qscale.kernels.triton_ptx int4-g128 mxfp4 nf4 --dtype bf16 --arch 90

Run it in a process *without* ``TRITON_INTERPRET`` (the interpreter replaces ``triton.jit``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

_TYPES = {
    "x_ptr": "*{dtype}",
    "y_ptr": "*{dtype}",
    "stats_ptr": "*fp32",
    "mid_ptr": "*fp32",
    "val_ptr": "*fp32",
    "clip_ptr": "*fp32",
    "sq_ptr": "*fp32",
    "n_rows": "i32",
    "n_cols": "i32",
    "span": "i32",
    "n_spans": "i32",
    "n_clip": "i32",
}


def audit_ptx(spec: str, dtype: str = "bf16", arch: int = 90, with_sqnr: bool = False) -> dict[str, Any]:
    """Compile the main kernel for ``spec`` (one 4096-element tile) and report PTX facts."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(
            "unset TRITON_INTERPRET to compile for a GPU target (the interpreter replaces jit)"
        )
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qscale.formats import get_format
    from qscale.kernels import triton_jit
    from qscale.kernels.triton_kernels import _constexprs, _tile, plan_for

    fmt = get_format(spec)
    plan = plan_for(fmt)
    span = 1024 if plan.granularity in ("tensor", "channel") else plan.group
    rows, block, nchunk = _tile(span, 1 << 20, 4096, 1024)
    consts = _constexprs(plan)
    consts.update(
        GLOBAL_STATS=plan.granularity == "tensor",
        WITH_SQNR=with_sqnr,
        ROWS=rows,
        BLOCK_K=block,
        NCHUNK=nchunk,
    )
    fn = triton_jit._fake_quant_kernel
    names = fn.arg_names
    sig = {n: ("constexpr" if n in consts else _TYPES[n].format(dtype=dtype)) for n in names}
    # The 16-divisibility Triton's launcher infers for aligned tensors and row lengths divisible by 16.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(names)
        if n not in consts and n not in ("n_rows", "n_clip")
    }
    src = ASTSource(
        fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs
    )
    kernel = triton.compile(
        src, target=GPUTarget("cuda", arch, 32), options={"enable_fp_fusion": False, "num_warps": 4}
    )
    ptx = kernel.asm["ptx"]
    return {
        "spec": str(fmt),
        "dtype": dtype,
        "arch": arch,
        "div_rn_f32": "div.rn.f32" in ptx,
        "approx_div": bool(re.search(r"div\.(full|approx)", ptx)),
        "fma_f32": bool(re.search(r"fma\.\w+\.f32", ptx)),
        "ftz": ".ftz" in ptx,
        "vector_loads": len(re.findall(r"ld\.global(\.\w+)*\.v[248]", ptx)),
        "scalar_x_loads": len(re.findall(r"ld\.global(\.\w+)*\.b16 ", ptx)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Audit the PTX of the Triton fake-quant kernels (no GPU needed).")
    p.add_argument("specs", nargs="+", help="format specs, e.g. int4-g128 mxfp4 nf4")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100)")
    p.add_argument("--sqnr", action="store_true", help="the fused-SQNR variant")
    args = p.parse_args(argv)
    for spec in args.specs:
        print(json.dumps(audit_ptx(spec, args.dtype, args.arch, args.sqnr)), flush=True)


if __name__ == "__main__":
    main()
