"""Activation outlier statistics against a by-hand numpy/scipy computation on a model with an injected
outlier channel, and the weight statistics they are reported with."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from qscale.measure.outliers import activation_stats, outlier_report

VOCAB = 24


class _MLPLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 8)
        self.lm_head = torch.nn.Linear(8, VOCAB)

    def forward(self, ids):
        return self.lm_head(self.fc2(torch.relu(self.fc1(self.emb(ids)))))


@pytest.fixture()
def model_and_ids():
    torch.manual_seed(0)
    model = _MLPLM()
    with torch.no_grad():
        model.emb.weight.mul_(0.5)
        model.emb.weight[:, 3] *= 40.0  # the injected outlier feature: |x| up to ~40 in channel 3
        model.emb.weight[5, 6] = -7.5  # one token (id 5) past the threshold in channel 6
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(1))
    ids[1, 4] = 5
    return model, ids


def _by_hand(x: np.ndarray, thr: float = 6.0) -> dict:
    am = np.abs(x).max(axis=0)
    return {
        "absmax": am.max(),
        "max_over_median": am.max() / np.median(am),
        "kurtosis": scipy.stats.kurtosis(x.ravel(), fisher=True, bias=True),
        "outlier_dims": tuple(int(i) for i in np.nonzero(am > thr)[0]),
        "channel_absmax": am,
    }


def test_activation_stats_match_hand_computation(model_and_ids):
    model, ids = model_and_ids
    w = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    x1 = w["emb.weight"][ids.numpy()].reshape(-1, 8)  # fc1 input
    x2 = np.maximum(x1 @ w["fc1.weight"].T + w["fc1.bias"], 0)  # fc2 input
    refs = {"fc1": _by_hand(x1), "fc2": _by_hand(x2)}
    assert refs["fc1"]["outlier_dims"] == (3, 6)  # the injection worked as intended

    stats = activation_stats(model, ids)
    assert list(stats.layers) == ["fc1", "fc2"]  # lm_head excluded by default
    for name, ref in refs.items():
        s = stats.layers[name]
        assert s.n_tokens == 30
        assert s.absmax == pytest.approx(ref["absmax"], rel=1e-6)
        assert s.max_over_median == pytest.approx(ref["max_over_median"], rel=1e-6)
        assert s.kurtosis == pytest.approx(ref["kurtosis"], rel=1e-5)
        assert s.outlier_dims == ref["outlier_dims"]
        assert s.n_outlier_features == len(ref["outlier_dims"])
        np.testing.assert_allclose(s.channel_absmax, ref["channel_absmax"], rtol=1e-6)
    assert stats.layers["fc1"].kurtosis > 3  # the outlier channel makes the inputs heavy-tailed
    assert stats.n_outlier_features == len(refs["fc1"]["outlier_dims"]) + len(refs["fc2"]["outlier_dims"])
    assert stats.outlier_feature_frac == pytest.approx(stats.n_outlier_features / (8 + 16))
    assert stats.max_over_median_max == pytest.approx(
        max(r["max_over_median"] for r in refs.values()), rel=1e-6
    )
    assert stats.kurtosis_mean == pytest.approx(np.mean([r["kurtosis"] for r in refs.values()]), rel=1e-5)
    assert stats.absmax == pytest.approx(max(r["absmax"] for r in refs.values()), rel=1e-6)


def test_chunked_accumulation_equals_whole_batch(model_and_ids):
    model, ids = model_and_ids
    whole = activation_stats(model, ids)
    chunked = activation_stats(model, ids, batch_size=1)
    for name in whole.layers:
        a, b = whole.layers[name], chunked.layers[name]
        assert a.channel_absmax == b.channel_absmax
        assert a.kurtosis == pytest.approx(b.kurtosis, rel=1e-9)
    # threshold is honoured: at 100 nothing is an outlier; no hooks are left behind
    assert activation_stats(model, ids, threshold=100.0).n_outlier_features == 0
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_kurtosis_of_a_gaussian_input_is_near_zero():
    torch.manual_seed(3)
    model = _MLPLM()
    with torch.no_grad():
        model.emb.weight.normal_()
    ids = torch.randint(0, VOCAB, (64, 64), generator=torch.Generator().manual_seed(2))
    s = activation_stats(model, ids, include=["fc1"]).layers["fc1"]
    ref = _by_hand(model.emb.weight.detach().double().numpy()[ids.numpy()].reshape(-1, 8))["kurtosis"]
    assert s.kurtosis == pytest.approx(ref, rel=1e-6)
    assert abs(s.kurtosis) < 1.0  # 24 Gaussian embedding rows, reused: near 0, not exactly


def test_conv1d_inputs_and_weight_report():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
        )
    )
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    seen = {}

    def grab(_module, args):  # returns None: a pre-hook's return value would replace the input
        seen["x"] = args[0].detach().double().reshape(-1, 8).numpy()

    h = model.transformer.h[0].mlp.c_fc.register_forward_pre_hook(grab)
    model.eval()
    with torch.no_grad():
        model(ids)
    h.remove()
    rep = outlier_report(model, ids)
    acts = rep["activations"]["layers"]
    assert set(acts) == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    }
    ref = _by_hand(seen["x"])
    assert acts["transformer.h.0.mlp.c_fc"]["n_channels"] == 8
    assert acts["transformer.h.0.mlp.c_fc"]["kurtosis"] == pytest.approx(ref["kurtosis"], rel=1e-5)
    assert acts["transformer.h.0.mlp.c_proj"]["n_channels"] == 32
    w = model.transformer.h[0].mlp.c_fc.weight.detach().double().numpy().ravel()
    wk = rep["weights"]["layers"]["transformer.h.0.mlp.c_fc"]["kurtosis"]
    assert wk == pytest.approx(scipy.stats.kurtosis(w, fisher=True, bias=True), rel=1e-9)


def test_bad_input_errors(model_and_ids):
    model, ids = model_and_ids
    with pytest.raises(ValueError, match="LongTensor"):
        activation_stats(model, ids.float())
    with pytest.raises(ValueError, match="threshold"):
        activation_stats(model, ids, threshold=-1)
    with pytest.raises(ValueError, match="batch_size"):
        activation_stats(model, ids, batch_size=0)
