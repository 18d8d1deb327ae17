"""Public-results ingestion: row counts, parsed fields on known rows, exact parameter counts."""

import math

import pytest

from qscale.laws.public import _ARCH, ArchSpec, load_public, normalise_method, parse_group_size


@pytest.fixture(scope="module")
def data():
    return load_public(panel=None)  # the published rows only (the panel's runs are tested elsewhere)


def test_row_counts_and_drop_reasons(data):
    t = data.table
    assert len(t) == 4497  # SOURCES.md: 4,497 rows
    assert t["table_id"].nunique() == 52
    usable = t[t["usable"]]
    assert usable["target"].value_counts().to_dict() == {"acc_drop": 2260, "log_ppl_ratio": 262, "kld": 53}
    # every row is either usable or has exactly one counted reason
    assert sum(data.dropped.values()) + len(usable) == 4497
    assert data.dropped["baseline row (bits >= 16)"] == 759
    assert data.dropped["duplicate of another table (T07 = T06)"] == 16
    assert data.dropped["collapsed (value > 100x baseline)"] == 2
    assert data.dropped["word-level perplexity (not comparable)"] == 23


def _row(t, table, model, datatype):
    sel = t[(t["table_id"].str.startswith(table)) & (t["model"] == model) & (t["datatype"] == datatype)]
    sel = sel[sel["metric"] == "ppl"]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_transformerx_rtn_row(data):
    r = _row(data.table, "T08", "huggyllama/llama-7b", "int4 sym")
    assert r["value"] == 6.842 and r["baseline"] == 5.673
    assert r["delta_ppl"] == pytest.approx(1.169, abs=1e-12)
    assert r["log_ppl_ratio"] == pytest.approx(math.log(6.842 / 5.673), rel=1e-12)
    assert r["method"] == "rtn" and r["per_channel"] and math.isnan(r["group_size"])
    assert r["bpw"] == 4.0 and r["usable"]
    assert r["n_nonembed"] == 6_476_271_616 and r["params_exact"]
    assert r["train_tokens"] == 1.0e12


def test_bpw_from_notes(data):
    r = _row(data.table, "T04", "LLaMA-7B", "ggml:Q4_0")
    assert r["bpw"] == 4.5 and r["bpw_source"] == "notes:bpw"
    r = _row(data.table, "T01", "Meta-Llama-3-8B", "gguf:q8_0")
    assert r["bpw"] == pytest.approx(8.5008) and r["bpw_source"] == "notes:bpw_ref"
    assert r["log_ppl_ratio"] == pytest.approx(math.log(6.234284 / 6.233160))


def test_group_overhead_and_flags(data):
    t = data.table
    r = t[(t["table_id"] == "T10_deepcompressor_QServe_wiki2") & (t["model"] == "Llama-2 7B")]
    awq = r[r["method_raw"].str.startswith("AWQ")].iloc[0]
    assert awq["group_size"] == 128 and awq["bpw"] == pytest.approx(4 + 16 / 128)
    assert awq["method"] == "awq" and awq["weight_only"]
    w4a4 = r[r["datatype"] == "W4A4"]
    assert len(w4a4) > 0 and not w4a4["weight_only"].any() and not w4a4["usable"].any()
    qat = t[t["method"] == "efficientqat"]
    assert len(qat) > 0 and not qat["ptq"].any() and not qat["usable"].any()


def test_parse_group_size():
    assert parse_group_size("128 (main.py default; not stated with data)") == (128.0, False, True)
    g, pc, assumed = parse_group_size("per-channel (-1)")
    assert math.isnan(g) and pc and not assumed
    assert parse_group_size("64")[0] == 64.0
    assert parse_group_size("")[2] is True


def test_method_normalisation():
    assert normalise_method("GPTQ (act-order, true-sequential, static groups)") == "gptq"
    assert normalise_method("llama.cpp i-quant + imatrix") == "llamacpp-iquant"
    assert normalise_method("RTN asymmetric (min-max)") == "rtn"
    assert normalise_method("AWQ + HQQ") == "awq"
    assert normalise_method("none (bf16 baseline)") == "none"


def test_exact_parameter_counts_match_model_cards():
    # totals published on the model cards / HF configs
    assert _ARCH[("LLaMA-1", 7.0)].n_params == 6_738_415_616
    assert _ARCH[("LLaMA-1", 13.0)].n_params == 13_015_864_320
    assert _ARCH[("Llama-2", 70.0)].n_params == 68_976_648_192
    assert _ARCH[("Llama-3", 8.0)].n_params == 8_030_261_248
    # tied embeddings count once
    assert (
        ArchSpec(16, 1, 2, 2, 32, 100, tied=True).n_params == ArchSpec(16, 1, 2, 2, 32, 100).n_nonembed + 1600
    )


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv"):
        load_public(tmp_path / "nope.csv")
