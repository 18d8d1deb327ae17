"""The profile scores the weights a method produces: GPTQ's correlated errors need the input correlations.

Independent references: KL measured on the quantized model (exact, full vocabulary, ``qscale.measure.evaluate``)
for RTN and for GPTQ run through ``qscale.quantize.quantized``."""

from __future__ import annotations

import copy

import pytest

from qscale.formats import get_format
from qscale.measure import evaluate
from qscale.measure.sensitivity import cached_profile
from qscale.quantize import quantized
from qscale.workflows.profile import method_terms, profile_correlations

CAL = {"corpus": "enwiki_gensim", "n_samples": 16, "seq_len": 64, "seed": 0}
GPTQ = {"percdamp": 0.01, "blocksize": 16}


@pytest.fixture(scope="module")
def lm(shared_tokenizer):
    from qscale.lm.zoo import random_model

    return random_model("llama", shared_tokenizer, d_model=64, n_layers=2, n_heads=4, seq_len=64, seed=11)


def _measured(lm, spec, method, calib=None):
    ref = copy.deepcopy(lm.model)
    with quantized(
        lm.model, get_format(spec), method, params=GPTQ if method == "gptq" else None, calib=calib
    ):
        m = evaluate(lm.model, lm.tokenizer, corpus="enwiki_gensim", split="test", seq_len=64, max_tokens=4096,
                     reference=ref)  # fmt: skip
    return m["kld"]


def test_gptq_terms_need_the_input_correlations(lm, tmp_path):
    from qscale.corpora import calibration_batch

    prof, _, _ = cached_profile(lm, cache_dir=tmp_path)
    corr, info = profile_correlations(lm, prof)
    assert info["n_tokens"] == prof.n_tokens
    rtn = {t["format"]: t for t in method_terms(lm, prof, ["int4-g16"], correlations=corr)}
    gptq = {
        t["format"]: t
        for t in method_terms(
            lm, prof, ["int4-g16"], method="gptq", params=GPTQ, calibration=CAL, correlations=corr
        )
    }
    # RTN errors are uncorrelated within a row: the cross terms change the sum by a few percent only
    assert rtn["int4-g16"]["raw_corr"] == pytest.approx(rtn["int4-g16"]["raw"], rel=0.15)
    # GPTQ: the diagonal misses the compensation; with the correlations the prediction drops below it
    g = gptq["int4-g16"]
    assert g["raw_corr"] < 0.9 * g["raw"]
    calib = calibration_batch(lm.tokenizer, CAL["corpus"], CAL["n_samples"], CAL["seq_len"], CAL["seed"])
    meas_rtn, meas_gptq = _measured(lm, "int4-g16", "rtn"), _measured(lm, "int4-g16", "gptq", calib)
    assert meas_gptq < meas_rtn
    # the correlated prediction is within 1.6x of the measured GPTQ KL, and closer to it than the diagonal
    assert 1 / 1.6 < g["raw_corr"] / meas_gptq < 1.6, (g, meas_gptq)
    assert abs(g["raw_corr"] / meas_gptq - 1) < abs(g["raw"] / meas_gptq - 1)
