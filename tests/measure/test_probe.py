"""The noise probe against independent references: its measured KL against a float64 recomputation on the perturbed
weights, its perturbation's size against the profile's own layer terms, and a cached profile gaining a probe
without its Fisher pass being redone."""

from __future__ import annotations

import pytest
import torch

from qscale.lm.layers import linear_layers
from qscale.measure.probe import _noise, noise_probe, rows_windows
from qscale.measure.sensitivity import compute_profile
from tests.helpers import tiny_lm
from tests.measure.test_sensitivity import _LM


def _by_hand_kl(model, ids, perturbed: dict) -> float:
    """Mean KL(float || perturbed) over every token but each row's first (their logits predict nothing scored),
    float64, on a copy of the model."""
    import copy

    m64 = copy.deepcopy(model).double()
    refs = {r.name: r for r in linear_layers(m64)}
    with torch.no_grad():
        p = m64(input_ids=ids).logits[:, :-1].log_softmax(-1)
        for n, w in perturbed.items():
            refs[n].set_weight(w.double())
        q = m64(input_ids=ids).logits[:, :-1].log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_probe_kl_matches_float64_and_the_profile_sets_its_size():
    model = tiny_lm("llama", seed=2)
    lm = _LM(model)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    prof = compute_profile(lm, ids, estimator="full", label_draws=32, seed=0)
    win = rows_windows(torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(5)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = noise_probe(lm, prof, win, target=2e-3, seed=11, batch_size=2)
    # the weights are restored bit for bit
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    # the perturbation, rebuilt: eps * rms_row(W) * z with layer i's z from seed 11 + i
    refs = [r for r in linear_layers(model) if r.name in prof.layers]
    pert = {
        r.name: r.get_weight().float() + res["eps"] * _noise(r.get_weight(), 11 + i)
        for i, r in enumerate(refs)
    }
    terms = prof.layer_terms(model, None, weights=lambda ref: pert[ref.name])
    # its raw prediction is the target (raw is quadratic in eps)
    assert sum(t["kld"] for t in terms.values()) == pytest.approx(2e-3, rel=1e-4)
    # its relative size: ||dW|| / ||W|| over all layers
    num = sum(float((pert[r.name] - r.get_weight()).double().square().sum()) for r in refs)
    den = sum(float(r.get_weight().double().square().sum()) for r in refs)
    assert res["rel_err"] == pytest.approx((num / den) ** 0.5, rel=1e-4)
    # the measured KL against float64 by hand on the same rows
    kl = _by_hand_kl(model, win.input_ids, pert)
    assert res["measured"] == pytest.approx(kl, rel=2e-3)
    assert res["tokens"] == 3 * 23 and res["passes"] == {"forward": 6}
    # a small perturbation is in the quadratic regime: the factor is near 1 (32 label draws, diagonal Fisher)
    assert res["factor"] == pytest.approx(kl / 2e-3, rel=2e-3) and 0.6 < res["factor"] < 1.5


def test_probe_refuses_a_non_positive_target():
    model = tiny_lm("llama", seed=2)
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(1))
    prof = compute_profile(_LM(model), ids, estimator="full")
    with pytest.raises(ValueError, match="target must be > 0"):
        noise_probe(_LM(model), prof, rows_windows(ids), target=0.0)


def test_cached_profile_gains_a_probe_without_a_new_fisher_pass(tmp_path, shared_tokenizer, monkeypatch):
    from qscale.lm.zoo import random_model
    from qscale.measure import sensitivity
    from qscale.measure.probe import default_probe_settings
    from qscale.measure.sensitivity import SensitivityProfile, cached_profile

    lm = random_model("llama", shared_tokenizer, d_model=32, n_layers=1, n_heads=2, seq_len=32, seed=3)
    prof, path, computed = cached_profile(lm, cache_dir=tmp_path, probe=False)
    assert computed and prof.probe is None and SensitivityProfile.load(path).probe is None
    calls = []
    real = sensitivity.compute_profile
    monkeypatch.setattr(sensitivity, "compute_profile", lambda *a, **k: calls.append(1) or real(*a, **k))
    prof2, _, computed2 = cached_profile(lm, cache_dir=tmp_path)
    assert computed2 and not calls  # the probe ran, the Fisher pass did not
    assert prof2.probe["settings"] == default_probe_settings(lm)
    assert prof2.probe_factor == pytest.approx(prof2.probe["measured"] / prof2.probe["raw"])
    for n, lp in prof.layers.items():
        assert torch.equal(lp.row, prof2.layers[n].row) and torch.equal(lp.col, prof2.layers[n].col)
    # saved with the probe; the next call reads it back and computes nothing
    prof3, _, computed3 = cached_profile(lm, cache_dir=tmp_path)
    assert not computed3 and not calls and prof3.probe == prof2.probe
