"""Input correlations for the sensitivity profile: the Fisher's off-diagonal terms within an output row.

The profile (:mod:`qscale.measure.sensitivity`) keeps the Fisher **diagonal** F_ij of every linear weight, and a
weight error dW is scored as 1/(2N) sum_ij F_ij dW_ij^2. That is exact on average when the errors of one row are
uncorrelated (round-to-nearest). GPTQ makes them correlated on purpose: it moves the error of column j into the
later columns so that dW X stays small, and then the diagonal misses most of the compensation.

Within output row i the Fisher block is E[g_i^2 x_j x_k] (g_i: the output gradient, x: the layer's input). With
the usual Kronecker assumption (g independent of x) it is sqrt(F_ij F_ik) R_jk, where R is the input
**correlation** matrix R_jk = E[x_j x_k] / sqrt(E[x_j^2] E[x_k^2]). The diagonal (R_jj = 1) is the profile's own,
so this form adds only the cross terms:

    kl_l = 1/(2N) sum_i Y_i R Y_i^T,   Y = dW * sqrt(F)

Cross-row terms (correlated output gradients) stay out, as in GPTQ's own objective. R comes from forward passes
over calibration tokens (no backward); it is held in memory, one (in, in) fp32 matrix per layer (SmolLM2-135M:
0.4 GB, Qwen2.5-Coder-0.5B: 2.5 GB), and not stored in the profile artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from qscale.lm.layers import linear_layers
from qscale.quantize.gptq import HessianAccumulator


@torch.no_grad()
def input_correlations(
    model: torch.nn.Module,
    calib: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every linear layer's input correlation matrix ``R`` (in, in) from forward passes over ``calib`` (n, L).

    Returns ``(R by layer name, info)``; ``info`` has the seconds, forward passes and tokens. Layers reading the
    same input tensor (q/k/v, gate/up) share one matrix. A dead input (E[x_j^2] = 0) gets R_jj = 1 and no cross
    terms.
    """
    refs = linear_layers(model, include=include, exclude=exclude)
    acc: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose accumulator it shares
    # id of an input tensor in the current forward -> (first layer that read it, the tensor: held so that its id
    # cannot be reused by a later tensor of the same forward)
    seen: dict[int, tuple[str, torch.Tensor]] = {}
    hooks = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            key = id(x)
            if key in seen:
                owner.setdefault(name, seen[key][0])
                return
            seen[key] = (name, x)
            owner.setdefault(name, name)
            if name not in acc:
                acc[name] = HessianAccumulator(x.shape[-1], device=x.device, dtype=torch.float32)
            acc[name].add(x)

        return hook

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    dev = next(iter(model.parameters())).device
    n_fwd = n_tok = 0
    try:
        for r in refs:
            hooks.append(r.module.register_forward_pre_hook(make_hook(r.name)))
        for i in range(0, calib.shape[0], batch_size):
            seen.clear()
            ids = calib[i : i + batch_size].to(dev)
            model(input_ids=ids, use_cache=False)
            n_fwd += 1
            n_tok += int(ids.numel())
            if progress is not None:
                progress(min(i + batch_size, int(calib.shape[0])), int(calib.shape[0]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    corr: dict[str, torch.Tensor] = {}
    for name, a in acc.items():
        s = a.sum
        d = s.diagonal().clamp_min(0)
        alive = d > 0
        inv = torch.where(alive, d.rsqrt(), torch.zeros_like(d))
        r_ = s * inv[:, None] * inv[None, :]
        r_.diagonal().copy_(torch.ones_like(d))
        corr[name] = r_
    out = {r.name: corr[owner[r.name]] for r in refs if r.name in owner}
    info = {"seconds": round(time.perf_counter() - t0, 2), "forward": n_fwd, "n_tokens": n_tok}
    return out, info


def sqrt_fisher(lp: Any) -> torch.Tensor:
    """sqrt(F) of a :class:`qscale.measure.sensitivity.LayerProfile`: (out, 1) x (1, in) factors for rank-1
    profiles (broadcast by the caller), the full (out, in) matrix otherwise."""
    if lp.full is not None:
        return lp.full.float().clamp_min(0).sqrt()
    return lp.row.float().clamp_min(0).sqrt()[:, None] * lp.col.float().clamp_min(0).sqrt()[None, :]


def correlated_sq_error(sqrt_f: torch.Tensor, dw: torch.Tensor, corr: torch.Tensor) -> float:
    """sum_i Y_i R Y_i^T with Y = dW * sqrt(F) (``sqrt_f`` broadcastable to ``dw`` (out, in)); fp32 products,
    float64 sum of the row terms."""
    y = dw.detach().float() * sqrt_f
    return float(((y @ corr) * y).sum(-1).double().sum())


__all__ = ["correlated_sq_error", "input_correlations", "sqrt_fisher"]
