"""Input correlations of the profile (qscale.measure.kron) against float64 recomputations from the captured inputs,
and the correlated error term against the GPTQ objective ||dW X||^2 computed directly."""

from __future__ import annotations

import pytest
import torch

from qscale.lm.layers import linear_layers
from qscale.measure.kron import correlated_sq_error, input_correlations
from tests.helpers import tiny_lm


def _captured_inputs(model, ids, refs):
    got: dict[str, list[torch.Tensor]] = {r.name: [] for r in refs}
    hooks = [
        r.module.register_forward_pre_hook(lambda _m, a, n=r.name: got[n].append(a[0].detach().double()))
        for r in refs
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in got.items()}


def test_correlations_match_a_float64_recomputation():
    model = tiny_lm("llama", seed=4)
    ids = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(2))
    refs = linear_layers(model)
    corr, info = input_correlations(model, ids, batch_size=4)
    assert info["forward"] == 2 and info["n_tokens"] == 96
    xs = _captured_inputs(model, ids, refs)
    for r in refs:
        x = xs[r.name]
        s = x.t() @ x
        d = s.diagonal().sqrt()
        want = s / d[:, None] / d[None, :]
        assert torch.allclose(corr[r.name].double(), want, atol=2e-5), r.name
        assert torch.equal(corr[r.name].diagonal(), torch.ones(r.in_features))
    # q/k/v read one tensor: one shared matrix
    names = [r.name for r in refs]
    q = next(n for n in names if n.endswith("q_proj"))
    k = q.replace("q_proj", "k_proj")
    assert corr[q] is corr[k]


def test_correlated_term_is_the_gptq_objective_weighted_by_rows():
    """With sqrt(F_ij) = sqrt(r_i * c_j) and c_j = sum_t x_tj^2, sum_i Y_i R Y_i^T = sum_i r_i ||dW_i X^T||^2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(
        12, 12, generator=g, dtype=torch.float64
    )
    dw = torch.randn(5, 12, generator=g, dtype=torch.float64)
    r = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    s = x.t() @ x
    c = s.diagonal()
    corr = s / c.sqrt()[:, None] / c.sqrt()[None, :]
    sqrt_f = (r.sqrt()[:, None] * c.sqrt()[None, :]).float()
    want = float((r * (dw @ x.t()).square().sum(-1)).sum())
    got = correlated_sq_error(sqrt_f, dw.float(), corr.float())
    assert got == pytest.approx(want, rel=1e-4)
    # the identity correlation leaves the diagonal profile's sum_ij F_ij dW_ij^2
    diag = float((r[:, None] * c[None, :] * dw.square()).sum())
    assert correlated_sq_error(sqrt_f, dw.float(), torch.eye(12)) == pytest.approx(diag, rel=1e-4)
