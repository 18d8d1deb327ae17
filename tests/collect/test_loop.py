"""The job loop on tiny random checkpoints, checked against an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from qscale.collect.runner import StopFlag, collect
from qscale.collect.spec import parse_spec, plan
from qscale.collect.store import RunStore
from qscale.features import compute_features
from qscale.kernels import fake_quant

FORMATS = ["int8-pc", "int4-g32", "fp8-e4m3-pc"]
EVAL = {"seq_len": 64, "max_tokens": 1024, "batch_size": 4}


def _spec(models, formats=FORMATS, methods=("rtn",), features=("sqnr_db", "weight_stats", "n_nonembed")):
    return parse_spec(
        {
            "name": "loop-test",
            "models": [str(m) for m in models],
            "formats": list(formats),
            "methods": list(methods),
            "eval": EVAL,
            "features": list(features),
        }
    )


def _independent_nll(model_dir, fmt_spec):
    """NLL of the model with every block linear weight fake-quantized, scored in float64 by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qscale.corpora import get_windows
    from qscale.formats import get_format

    fmt = get_format(fmt_spec)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager"
    )
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    with torch.no_grad():
        for layer in model.model.layers:
            for mod in layer.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight.copy_(fake_quant(fmt, mod.weight.detach().clone()))
        model.double()
        w = get_windows(
            tok, corpus="enwiki_gensim", split="test", protocol="stride", seq_len=64, max_tokens=1024
        )
        total, n = 0.0, 0
        for i in range(w.input_ids.shape[0]):
            ids = w.input_ids[i : i + 1]
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            mask = w.score_mask[i, 1:]
            total -= float(logp[mask].gather(1, ids[0, 1:][mask][:, None]).sum())
            n += int(mask.sum())
    return total / n


def _independent_sqnr(model_dir, fmt_spec):
    from transformers import AutoModelForCausalLM

    from qscale.formats import get_format

    fmt = get_format(fmt_spec)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    sig = noise = 0.0
    for layer in model.model.layers:
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.detach()
                q = fake_quant(fmt, w.clone())
                sig += float(w.double().square().sum())
                noise += float((w.double() - q.double()).square().sum())
    return 10 * math.log10(sig / noise)


def test_sweep_rows_match_an_independent_recomputation(tiny_models, tmp_path, monkeypatch):
    import qscale.lm.loading as loading

    loads = []
    real_load = loading.load

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "load", counting_load)
    spec = _spec(tiny_models)
    with RunStore(tmp_path / "runs.sqlite") as st:
        res = collect(spec, st, progress=False)
        frame = st.to_frame()
        detail = st.to_frame(detail=True)
    assert (res.n_planned, res.n_ok, res.n_error, res.n_skipped) == (6, 6, 0, 0)
    assert loads == [str(m) for m in tiny_models]  # each model loaded exactly once for all its formats
    assert sorted(frame["format"]) == sorted(FORMATS * 2) and set(frame["status"]) == {"ok"}

    for model_dir in tiny_models:
        rows = detail[detail["model_ref"] == str(model_dir)]
        assert rows["float_nll"].nunique() == 1  # float evaluated once; restored weights between formats
        # the LAST format run on this model (after two quantize/restore cycles) and the first one
        for fmt in (FORMATS[0], FORMATS[-1]):
            r = rows[rows["format"] == fmt].iloc[0]
            assert r["nll"] == pytest.approx(_independent_nll(model_dir, fmt), rel=2e-5)
            assert r["sqnr_db"] == pytest.approx(_independent_sqnr(model_dir, fmt), abs=1e-6)
            assert r["dnll"] == pytest.approx(r["nll"] - r["float_nll"], abs=1e-12)
            assert r["ppl"] == pytest.approx(math.exp(r["nll"]), rel=1e-9)
            assert 0.0 <= r["top1"] <= 1.0 and r["kld"] > -1e-6
        r = rows.iloc[0]
        assert r["float_nll"] == pytest.approx(_float_nll(model_dir), rel=2e-5)
    # facts and format columns
    int4 = detail[detail["format"] == "int4-g32"].iloc[0]
    assert int4["bits_per_element"] == pytest.approx(4 + 16 / 32) and int4["element_bits"] == 4
    assert int4["fmt_family"] == "int" and int4["family"] == "llama"
    assert int4["eval_protocol"] == "stride" and int4["eval_max_tokens"] == 1024


def _float_nll(model_dir):
    """NLL of the unquantized model in float64, scored by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qscale.corpora import get_windows

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float64, attn_implementation="eager"
    )
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    w = get_windows(tok, corpus="enwiki_gensim", split="test", protocol="stride", seq_len=64, max_tokens=1024)
    with torch.no_grad():
        logp = model(w.input_ids).logits[:, :-1].log_softmax(-1)
    mask = w.score_mask[:, 1:]
    return -float(logp[mask].gather(1, w.input_ids[:, 1:][mask][:, None]).mean())


def test_features_at_predict_time_equal_the_sweep_features(tiny_models, tmp_path):
    from qscale.lm.loading import load

    spec = _spec(tiny_models[:1], formats=["int4-g32"])
    with RunStore(tmp_path / "runs.sqlite") as st:
        collect(spec, st, progress=False)
        row = st.rows()[0]
    lm = load(str(tiny_models[0]))
    fresh = compute_features(lm, "int4-g32", ["sqnr_db", "weight_stats", "n_nonembed"])
    assert fresh.keys() == row["features"].keys()
    for k, v in fresh.items():
        assert row["features"][k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    assert fresh["n_nonembed"] == lm.facts.n_nonembed


def test_rerun_skips_finished_runs_and_failed_runs_wait_for_retry_failed(tiny_models, tmp_path):
    from qscale.quantize import Method, register_method

    @register_method("collect-test-fail")
    class _Fail(Method):
        def apply(self, ctx):
            ctx.save(ctx.layers[0].module.weight)
            ctx.layers[0].module.weight.data.mul_(1000.0)  # damage, then fail: the restore must undo it
            raise RuntimeError("deliberate failure")

    spec = _spec(tiny_models[:1], formats=["int8-pc", "int4-g32"], methods=["collect-test-fail", "rtn"])
    with RunStore(tmp_path / "runs.sqlite") as st:
        first = collect(spec, st, progress=False)
        assert (first.n_ok, first.n_error) == (2, 2)
        errors = st.rows("error")
        assert all("deliberate failure" in r["error"] for r in errors)
        ok = {r["run_key"]: r for r in st.rows("ok")}
        # the failing method ran before each rtn run: rtn results are those of an intact model
        frame = st.to_frame("ok")
        assert frame["float_nll"].nunique() == 1
        second = collect(spec, st, progress=False)
        assert (second.n_ok, second.n_error, second.n_skipped) == (0, 0, 4)
        third = collect(spec, st, progress=False, retry_failed=True)
        assert (third.n_ok, third.n_error, third.n_skipped) == (0, 2, 2)
        assert all(r["attempts"] == 2 for r in st.rows("error"))
        assert {r["run_key"]: r["created_utc"] for r in st.rows("ok")} == {
            k: r["created_utc"] for k, r in ok.items()
        }
        assert len(st) == len(plan(spec)) == 4
        # the skip-without-loading path: the model cache knows the identity now
        sig_rows = st._conn.execute("SELECT COUNT(*) FROM model_cache").fetchone()[0]
        assert sig_rows == 1


def test_stop_flag_ends_after_the_current_run(tiny_models, tmp_path):
    spec = _spec(tiny_models[:1])
    with RunStore(tmp_path / "runs.sqlite") as st:
        flag = StopFlag()
        real_put = st.put

        def put_then_stop(row):
            out = real_put(row)
            flag.set()
            return out

        st.put = put_then_stop
        res = collect(spec, st, progress=False, stop=flag)
        assert res.stopped and res.n_ok == 1 and len(st) == 1
        st.put = real_put
        res2 = collect(spec, st, progress=False)
        assert (res2.n_ok, res2.n_skipped) == (2, 1) and len(st) == 3


def test_a_model_that_cannot_load_gives_error_rows(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    spec = _spec([bad], formats=["int8-pc"], features=())
    with RunStore(tmp_path / "runs.sqlite") as st:
        res = collect(spec, st, progress=False)
        assert (res.n_ok, res.n_error) == (0, 1)
        (row,) = st.rows()
        assert row["status"] == "error" and row["error"].startswith("load failed")
