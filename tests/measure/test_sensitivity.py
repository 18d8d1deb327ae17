"""Sensitivity profiles against independent references: the exact Fisher of a tiny model by enumerating every
label, and KL measured on the model with a small perturbation."""

from __future__ import annotations

import pytest
import torch

from qscale.lm.layers import linear_layers
from qscale.measure.sensitivity import SensitivityProfile, compute_profile, rank1_nonneg
from tests.helpers import tiny_lm


class _LM:
    def __init__(self, model):
        self.model = model
        self.name = "tiny"

        class F:
            identity = "test:tiny"

        self.facts = F()


def _exact_fisher_diag(model, ids, refs):
    """sum_s sum_y p(y|c_s) (d log p(y|c_s) / dW)^2 by enumerating every label y (float64)."""
    model = model.double()
    out = {r.name: torch.zeros(r.out_features, r.in_features, dtype=torch.float64) for r in refs}
    for row in ids:
        logp = model(input_ids=row[None], use_cache=False).logits[0].log_softmax(-1)
        L, V = logp.shape
        eye = torch.eye(V, dtype=torch.float64)
        for s in range(L):
            p = logp[s].detach().exp()
            # every label's gradient at once: row y of the batch is d log p(y|c_s) / dW
            grads = torch.autograd.grad(
                logp[s], [r.weight for r in refs], grad_outputs=eye, retain_graph=True, is_grads_batched=True
            )
            for r, g in zip(refs, grads, strict=True):
                g2 = (p[:, None, None] * g**2).sum(0)
                out[r.name] += g2.t() if r.transposed else g2
    model.float()
    return out


def test_profile_is_an_unbiased_fisher_diagonal():
    model = tiny_lm("llama", seed=1)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    refs = linear_layers(model)[:3]
    exact = _exact_fisher_diag(model, ids, refs)
    names = [r.name for r in refs]
    prof = compute_profile(_LM(model), ids, estimator="full", label_draws=300, include=names, seed=3)
    assert prof.n_tokens == 12 and prof.passes == {"forward": 2, "backward": 600}
    for n in names:
        est = prof.layers[n].full.double()
        # 300 sampled label draws: the per-layer total is within a few percent of the exact Fisher.
        assert float(est.sum()) == pytest.approx(float(exact[n].sum()), rel=0.08)
        corr = torch.corrcoef(torch.stack([est.flatten(), exact[n].flatten()]))[0, 1]
        assert corr > 0.9


def test_predicted_kl_matches_measured_kl_of_a_small_perturbation():
    torch.manual_seed(0)
    model = tiny_lm("llama", seed=2)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    prof = compute_profile(_LM(model), ids, estimator="full", label_draws=32, seed=0)
    refs = linear_layers(model)
    noise = {r.name: 0.02 * r.get_weight().std() * torch.randn(r.out_features, r.in_features) for r in refs}

    class Add:
        def fake_quant(self, w):
            return w

    with torch.no_grad():
        p = model(input_ids=ids).logits.double().log_softmax(-1)
        saved = {r.name: r.get_weight().clone() for r in refs}
        for r in refs:
            r.set_weight(saved[r.name] + noise[r.name])
        q = model(input_ids=ids).logits.double().log_softmax(-1)
        for r in refs:
            r.set_weight(saved[r.name])
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    terms = prof.layer_terms(model, Add(), weights=lambda ref: saved[ref.name] + noise[ref.name])
    pred = sum(t["kld"] for t in terms.values())
    assert kl > 0
    # Diagonal Fisher, 32 label draws x 4 sequences, cross-layer terms ignored: within 35% of the measured KL.
    assert pred == pytest.approx(kl, rel=0.35)


def test_rank1_recovers_an_outer_product_and_roundtrips(tmp_path):
    r = torch.rand(7) + 0.1
    c = torch.rand(5) + 0.1
    rr, cc, fit = rank1_nonneg(torch.outer(r, c))
    assert torch.allclose(torch.outer(rr, cc), torch.outer(r, c), rtol=1e-5) and fit > 0.999999
    model = tiny_lm("gpt2", seed=0)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    prof = compute_profile(_LM(model), ids)
    path = prof.save(tmp_path / "p.safetensors")
    back = SensitivityProfile.load(path)
    assert back.meta() == prof.meta()
    for n, lp in prof.layers.items():
        assert torch.equal(back.layers[n].row, lp.row) and torch.equal(back.layers[n].col, lp.col)
    with pytest.raises(ValueError, match="estimator"):
        compute_profile(_LM(model), ids, estimator="diag")


@pytest.mark.parametrize("estimator", ["rank1", "full"])
def test_layer_terms_match_a_float64_recomputation_and_leave_the_weights_alone(estimator):
    from qscale.formats import get_format
    from qscale.kernels import fake_quant

    model = tiny_lm("llama", seed=3)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    prof = compute_profile(_LM(model), ids, estimator=estimator)
    refs = linear_layers(model)
    before = {r.name: r.get_weight().clone() for r in refs}
    fmt = get_format("int4-g32")
    terms = prof.layer_terms(model, fmt)
    for r in refs:
        w = before[r.name]
        assert torch.equal(r.get_weight(), w)  # the in-place error buffer is never the weight itself
        lp = prof.layers[r.name]
        fisher = lp.full.double() if estimator == "full" else torch.outer(lp.row.double(), lp.col.double())
        dw = fake_quant(fmt, w).double() - w.double()
        sig, noise = float(w.double().square().sum()), float(dw.square().sum())
        t = terms[r.name]
        assert t["kld"] == pytest.approx(0.5 * float((fisher * dw.square()).sum()) / prof.n_tokens, rel=1e-5)
        assert t["rel_err"] == pytest.approx((noise / sig) ** 0.5, rel=1e-5)
        assert t["sqnr_db"] == pytest.approx(10 * torch.log10(torch.tensor(sig / noise)).item(), abs=1e-4)
        assert t["numel"] == w.numel()
