"""qscale.predict: features computed only as needed (with costs), intervals, domain checks, budgets."""

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.artifacts import Law, save_law
from qscale.laws.estimators import LawError, LogLinearLaw, SecondOrderLaw
from qscale.laws.fitting import fit_law, load_fit_data
from qscale.laws.predict import Prediction, predict, predict_formats, recommend


@pytest.fixture(scope="module")
def public_law(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    data = load_fit_data(public=True)
    law = fit_law(data, "size-bits", "public-test", "table", models_dir=d)
    return law, d


def test_public_law_predicts_from_size_bits_method(public_law):
    law, d = public_law
    p4 = predict(law="public-test", models_dir=d, params_b=7, bits=4, method="gptq")
    p3 = predict(law="public-test", models_dir=d, params_b=7, bits=3, method="gptq")
    assert isinstance(p4, Prediction) and p4.unit.startswith("nats/token")
    assert p4.lo < p4.value < p4.hi and 0 < p4.value < p3.value  # fewer bits, more damage
    assert p4.features["bpw"] == 4.0 and p4.features["method"] == "gptq"
    assert p4.features["n_nonembed"] == 7e9 and any("nominal" in w for w in p4.warnings)
    ex = predict(law=law, params_b=7, bits=4, method="gptq", family="Llama-2")
    assert ex.features["n_nonembed"] == 6_476_271_616 and not any("nominal" in w for w in ex.warnings)
    g = predict(law=law, params_b=7, bits=4, group_size=128, method="GPTQ (act-order)")
    assert g.features["bpw"] == pytest.approx(4.125) and g.features["method"] == "gptq"
    # the same numbers as the estimator on a hand-built row
    X = pd.DataFrame([{"n_nonembed": 7e9, "bpw": 4.0, "method": "gptq"}])
    assert p4.value == pytest.approx(law.estimator.predict(X).iloc[0], rel=1e-12)


def test_out_of_domain_is_an_error_or_a_warning(public_law):
    law, _ = public_law
    with pytest.raises(LawError, match="refuses to extrapolate.*n_nonembed"):
        predict(law=law, params_b=7000, bits=4, method="gptq")  # ~100x beyond the largest model
    p = predict(law=law, params_b=7000, bits=4, method="gptq", extrapolate=True)
    assert any("beyond it" in w for w in p.warnings)
    p = predict(law=law, params_b=7, bits=4, method="mystery")
    assert any("not seen in training" in w for w in p.warnings)


def test_missing_inputs_are_named(public_law):
    law, _ = public_law
    with pytest.raises(LawError, match=r"needs feature\(s\) \['bpw'\]"):
        predict(law=law, params_b=7, method="gptq")


def test_recommend_picks_fewest_bits_within_budget():
    mk = lambda f, b, hi: Prediction(hi / 2, 0, hi, "n", "l", "dnll", 0.1, format=f, bits_per_element=b)  # noqa: E731
    preds = [mk("a", 4.5, 0.05), mk("b", 4.25, 0.2), mk("c", 4.125, 0.08), mk("d", 8.0, 0.001)]
    assert recommend(preds, 0.1).format == "c"
    assert recommend(preds, 0.001).format == "d"
    assert recommend(preds, 1e-4) is None


def _tiny_llama(path):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz .,"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    ).save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_zoo_law_computes_only_needed_features_on_a_real_model(tmp_path):
    pytest.importorskip("torch")
    from qscale.features import compute_features
    from qscale.lm import load

    model_dir = _tiny_llama(tmp_path / "tiny")
    lm = load(str(model_dir))
    truth = {
        f: compute_features(lm, f, ["sqnr_db", "n_nonembed"]) for f in ("int4-g16", "int8-pc", "int3-g16")
    }
    # a synthetic law dnll = 30 N^-0.3 10^(-SQNR/10), fitted around this model's features
    rng = np.random.default_rng(0)
    rows = []
    for s in np.linspace(5, 45, 30):
        for n in (1e3, 1e4, 1e5):
            rows.append(
                {
                    "sqnr_db": s,
                    "n_nonembed": n,
                    "dnll": 30 * n**-0.3 * 10 ** (-s / 10) * np.exp(0.05 * rng.normal()),
                }
            )
    est = SecondOrderLaw(features=("sqnr_db", "n_nonembed")).fit(pd.DataFrame(rows))
    law = Law(name="zoo-test", estimator=est, kind="zoo", preset="second-order")
    save_law(law, tmp_path / "models" / "zoo-test")
    preds = predict_formats(
        str(model_dir), ["int4-g16", "int8-pc", "int3-g16"], "zoo-test", models_dir=tmp_path / "models"
    )
    for p in preds:
        t = truth[p.format]
        assert p.features == pytest.approx({"sqnr_db": t["sqnr_db"], "n_nonembed": t["n_nonembed"]})
        assert p.costs == {"sqnr_db": "weights", "n_nonembed": "free"}
        X = pd.DataFrame([p.features])
        assert p.value == pytest.approx(est.predict(X).iloc[0], rel=1e-12)
    by = {p.format: p for p in preds}
    assert by["int8-pc"].value < by["int4-g16"].value < by["int3-g16"].value
    assert by["int4-g16"].bits_per_element == pytest.approx(5.0)  # 4 + 16/16
    # a group wider than the model's rows (hidden 32) is one partial group per row: predicted, not skipped;
    # a format that cannot be built is skipped with its reason, not fatal
    skipped: dict = {}
    more = predict_formats(lm, ["int4-g16", "int4-g64", "int33"], law, skipped=skipped)
    assert [p.format for p in more] == ["int4-g16", "int4-g64"] and list(skipped) == ["int33"]
    with pytest.raises(ValueError, match="int33"):
        predict_formats(lm, ["int33"], law)


def test_zoo_law_needs_model_or_features():
    df = pd.DataFrame({"bits_per_element": [2.0, 3, 4, 8], "dnll": [1.0, 0.3, 0.1, 0.001]})
    law = Law(
        name="b",
        estimator=LogLinearLaw(features=("bits_per_element",)).fit(df),
        kind="zoo",
        preset="bits-only",
    )
    p = predict(law=law, format="int4-pc")  # bits per element comes from the format spec, free
    assert p.costs == {"bits_per_element": "free"} and p.features["bits_per_element"] == 4.0
    with pytest.raises(LawError, match="needs"):
        predict(law=law)


def test_shipped_public_law_loads_and_predicts():
    """The three shipped public laws (one per target) answer with their target and unit, in order of bits."""
    from qscale.laws.artifacts import default_models_dir, list_laws

    shipped = set(list_laws(default_models_dir()))
    assert {"public-ppl", "public-kld", "public-acc"} <= shipped
    p4 = predict(law="public-ppl", params_b=7, bits=4, group_size=128, method="gptq")
    p2 = predict(law="public-ppl", params_b=7, bits=2, group_size=128, method="gptq")
    assert 0 < p4.value < p2.value and p4.lo <= p4.value <= p4.hi
    assert p4.target == "log_ppl_ratio"
    dv, dlo, dhi = p4.delta_ppl(5.47)
    assert dv == pytest.approx(5.47 * math.expm1(p4.value)) and dlo <= dv <= dhi
    k4 = predict(law="public-kld", format="int4-g32-asym", family="Llama-3", params_b=8, method="rtn")
    k8 = predict(law="public-kld", format="int8-g32", family="Llama-3", params_b=8, method="rtn")
    assert k4.target == "kld" and k8.lo >= 0 and k8.value < k4.value
    a = predict(law="public-acc", format="int2-g128", params_b=7, method="rtn", baseline_acc=55.0)
    assert a.target == "acc_drop" and a.unit.startswith("accuracy points")
    assert a.value <= a.hi <= 55.0  # a model cannot lose more than its whole accuracy
