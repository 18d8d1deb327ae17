"""qscale.workflows.profile.measured_runs: one row per (model, format), on the profile's corpus where a model has it."""

from __future__ import annotations

from qscale.collect.store import RunStore
from qscale.workflows.profile import measured_runs
from tests.helpers import store_row


def _run(key: str, model: str, fmt: str, corpus: str, kld: float, method: str = "rtn") -> dict:
    return store_row(
        key,
        model=model,
        model_ref=model,
        model_identity=f"id-{model}",
        format=fmt,
        method=method,
        config={"format": fmt, "eval": {"corpus": corpus, "split": "test"}},
        metrics={"nll": 3.0, "float_nll": 2.9, "kld": kld},
    )


def test_measured_runs_prefer_the_profile_corpus_then_the_first(tmp_path):
    path = tmp_path / "r.sqlite"
    with RunStore(path) as st:
        # model a: austen measured first, enwiki later; model b: austen only
        st.put(_run("a1", "m:a", "int4-g128", "austen", 0.5))
        st.put(_run("a2", "m:a", "int4-g128", "enwiki_gensim", 0.3))
        st.put(_run("a3", "m:a", "int8-pc", "enwiki_gensim", 0.01))
        st.put(_run("a4", "m:a", "int8-pc", "enwiki_gensim", 0.02, method="gptq"))
        st.put(_run("b1", "m:b", "int4-g128", "austen", 0.7))
    df = measured_runs([path])
    got = {(r.model, r.format): (r.eval_corpus, r.kld) for r in df.itertuples()}
    assert got == {
        ("m:a", "int4-g128"): ("enwiki_gensim", 0.3),
        ("m:a", "int8-pc"): ("enwiki_gensim", 0.01),
        ("m:b", "int4-g128"): ("austen", 0.7),
    }
    austen = measured_runs([path], corpus="austen")
    assert set(zip(austen["model"], austen["eval_corpus"], austen["kld"], strict=True)) == {
        ("m:a", "austen", 0.5),
        ("m:b", "austen", 0.7),
    }
