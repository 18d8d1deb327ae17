"""Public laws' new data (issue 14): every target with its unit, training tokens with sources, each datatype's
qscale format and capacity, the real panel's rows; checked against the raw CSV and float64 recomputation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.public import (
    DEFAULT_PUBLIC_CSV,
    TARGETS,
    format_capacity,
    load_public,
    public_spec,
    target_of,
    train_tokens,
)


@pytest.fixture(scope="module")
def data():
    return load_public()


@pytest.fixture(scope="module")
def raw():
    return pd.read_csv(DEFAULT_PUBLIC_CSV, dtype=str, keep_default_na=False)


def test_metrics_map_to_targets():
    assert target_of("ppl") == "log_ppl_ratio"
    assert target_of("kld_mean_vs_fp16") == "kld"
    assert target_of("acc_hellaswag") == "acc_drop" and target_of("mmlu_5shot_macro_avg_acc") == "acc_drop"
    assert target_of("mean_delta_p_percent") is None and target_of("same_top_p_percent") is None
    assert set(TARGETS) == {"log_ppl_ratio", "kld", "acc_drop"}


def test_accuracy_drop_in_points_from_raw_rows(data, raw):
    t = data.table
    # T16f reports fractions (0.7388): the drop is put on the 0-100 scale
    r = raw[(raw["table_id"] == "T16f_torchao_Llama3.1-8B_accuracy") & (raw["datatype"] == "int8wo")]
    rows = t[(t["table_id"] == "T16f_torchao_Llama3.1-8B_accuracy") & (t["target"] == "acc_drop")]
    rows = rows[rows["baseline"].notna() & (rows["bits"] < 16)]
    assert len(rows) > 0
    for _, row in rows.iterrows():
        assert row["acc_drop"] == pytest.approx(100.0 * (row["baseline"] - row["value"]), abs=1e-9)
    # AutoRound (T09) reports points already: no rescaling
    x = t[t["table_id"].str.startswith("T09_") & t["usable"]].iloc[0]
    src = raw.iloc[x.name]
    assert x["acc_drop"] == pytest.approx(float(src["baseline_value"]) - float(src["value"]), abs=1e-9)
    assert x["acc_retained"] == pytest.approx(float(src["value"]) / float(src["baseline_value"]))
    del r


def test_averages_and_unclear_columns_are_set_aside(data):
    t = data.table
    avg = t[t["metric"] == "acc_avg_11_tasks"]
    assert len(avg) > 0 and not avg["usable"].any()  # T09 also gives the 11 tasks one by one
    assert (avg[avg["bits"] < 16]["drop_reason"] == "average of other rows in the same table").all()
    first = t[t["metric"] == "acc_mmlu_firstvalue"]
    assert len(first) > 0 and not first["usable"].any()
    # a table that gives only an average keeps it
    assert t[(t["metric"] == "zero_shot_avg_acc") & t["usable"]].shape[0] > 0


def test_kl_rows(data, raw):
    k = data.rows("kld")
    assert set(k["family"]) == {"Llama-3", "Llama-2", "SmolLM2", "Qwen2.5-Coder"}
    l3 = k[(k["table_id"] == "T01_llamacpp_L3-8B_scoreboard") & (k["datatype"] == "gguf:q8_0")]
    assert l3["kld"].iloc[0] == pytest.approx(0.001355)
    assert l3["spec"].iloc[0] == "int8-g32"


def test_train_tokens_have_sources():
    assert train_tokens("Llama-2", 70.0)[0] == 2.0e12
    assert train_tokens("LLaMA-1", 33.0)[0] == 1.4e12
    assert train_tokens("Qwen2", 0.5)[0] == 12e12 and train_tokens("Qwen2", 7.0)[0] == 7e12
    assert train_tokens("Falcon", 180.0)[0] == 3.5e12
    d, src = train_tokens("Mistral", 7.0)
    assert math.isnan(d) and src == "unknown"  # not published: no guess
    d, src = train_tokens("Gemma-2", 27.0)
    assert d == 13e12 and "Gemma 2" in src


def test_every_known_family_in_the_rows_gets_d(data):
    t = data.table
    assert t.loc[t["family"] == "Llama-3", "train_tokens"].eq(15e12).all()
    assert t.loc[t["family"] == "Mixtral", "train_tokens"].isna().all()
    usable = t[t["usable"]]
    assert usable["train_tokens"].notna().mean() > 0.8


@pytest.mark.parametrize(
    ("datatype", "bits", "group", "per_channel", "spec"),
    [
        ("gguf:q4_1", 4, math.nan, False, "int4-g32-asym"),
        ("gguf:q8_0", 8, math.nan, False, "int8-g32"),
        ("gguf:q4_K_M", 4, math.nan, False, "int4-g32-asym"),
        ("gguf:iq2_XS", 2, math.nan, False, None),
        ("int3 asym (zero-point)", 3, 128.0, False, "int3-g128-asym"),
        ("int4 sym", 4, math.nan, True, "int4-pc"),
        ("uint4 asym", 4, math.nan, True, "int4-pc-asym"),
        ("W4A16 g128", 4, 128.0, False, "int4-g128"),
        ("nf4", 4, 64.0, False, "nf4-g64"),
        ("vq", 2.02, math.nan, False, None),
    ],
)
def test_public_spec(datatype, bits, group, per_channel, spec):
    assert public_spec(datatype, bits, group, per_channel)[0] == spec


def _int_pc_sqnr(w: np.ndarray, bits: int) -> float:
    """Independent float64 reference: symmetric absmax per row, levels -(2^(b-1)-1)..(2^(b-1)-1)."""
    qmax = 2 ** (bits - 1) - 1
    s = np.abs(w).max(axis=1, keepdims=True) / qmax
    q = np.clip(np.round(w / s), -qmax, qmax) * s
    return 10 * np.log10((w**2).sum() / ((w - q) ** 2).sum())


def test_capacity_against_a_float64_reference():
    import torch

    from qscale.measure.capacity import COLS, ROWS, _weights, capacity

    w = _weights("gauss").double().numpy()
    assert w.shape == (ROWS, COLS)
    for bits in (4, 8):
        sqnr, eff = capacity(f"int{bits}-pc")
        assert sqnr == pytest.approx(_int_pc_sqnr(w, bits), abs=0.02)
        assert eff == pytest.approx(sqnr / (20 * math.log10(2)))
    # heavier tails lose more capacity for per-channel absmax, little for small blocks
    g, t5 = format_capacity("int4-pc"), format_capacity("int4-g32")
    assert g["eff_bits_t5"] < g["eff_bits_gauss"] - 0.5
    assert abs(t5["eff_bits_t5"] - t5["eff_bits_gauss"]) < 0.5
    del torch


def test_committed_capacity_table_matches_the_kernels():
    from qscale.measure.capacity import capacity

    for spec in ("int4-g128", "nf4-g64", "mxfp4-e2m1-b32", "fp8-e4m3-pc"):
        committed = format_capacity(spec)
        assert committed["eff_bits_gauss"] == pytest.approx(capacity(spec, "gauss")[1], abs=1e-3)
        assert committed["eff_bits_t5"] == pytest.approx(capacity(spec, "t5")[1], abs=1e-3)
    # more bits, more capacity; a smaller group, more capacity
    e = {s: format_capacity(s)["eff_bits_gauss"] for s in ("int3-g128", "int4-g128", "int4-g32", "int8-g128")}
    assert e["int3-g128"] < e["int4-g128"] < e["int4-g32"] < e["int8-g128"]


def test_panel_rows_from_the_store(data):
    from qscale.collect.store import RunStore
    from qscale.laws.public import DEFAULT_PANEL_STORE

    with RunStore(DEFAULT_PANEL_STORE, readonly=True) as st:
        f = st.to_frame()
    ok = f[f["status"] == "ok"]
    p = data.table[data.table["table_id"] == "qscale-panel"]
    assert len(p) == 2 * len(ok)
    r = ok[(ok["model"] == "panel:smollm2-135m") & (ok["format"] == "nf4-g64")].iloc[0]
    ppl = p[
        (p["model"] == "panel:smollm2-135m") & (p["spec"] == "nf4-g64") & (p["target"] == "log_ppl_ratio")
    ]
    assert ppl["log_ppl_ratio"].iloc[0] == pytest.approx(math.log(r["ppl"] / r["float_ppl"]), rel=1e-9)
    assert ppl["log_ppl_ratio"].iloc[0] == pytest.approx(r["dnll"], rel=1e-6)  # the same number, two ways
    kl = p[(p["model"] == "panel:smollm2-135m") & (p["spec"] == "nf4-g64") & (p["target"] == "kld")]
    assert kl["kld"].iloc[0] == pytest.approx(r["kld"])
    assert (ppl["train_tokens"] == 2e12).all()
    # int4-g32-asym does not reproduce SmolLM2's Q4_1 grid (relative weight error 0.084, `qscale panel grid`)
    asym = p[(p["model"] == "panel:smollm2-135m") & (p["spec"] == "int4-g32-asym")]
    assert len(asym) == 2 and asym["usable"].all()


def test_panel_rows_set_aside_the_formats_the_registry_names_degenerate(monkeypatch):
    import dataclasses

    from qscale.laws.public import load_public
    from qscale.lm import panel

    entry = dataclasses.replace(panel.PANEL["smollm2-135m"], degenerate=("int4-g32-asym",))
    monkeypatch.setitem(panel.PANEL, "smollm2-135m", entry)
    p = load_public().table
    p = p[p["table_id"] == "qscale-panel"]
    deg = p[(p["model"] == "panel:smollm2-135m") & (p["spec"] == "int4-g32-asym")]
    assert len(deg) == 2 and not deg["usable"].any()
    assert deg["drop_reason"].str.startswith("degenerate").all()
    other = p[(p["model"] == "panel:qwen2.5-coder-0.5b") & (p["spec"] == "int4-g32-asym")]
    assert other.empty or other["usable"].all()


def test_public_law_reads_the_format(tmp_path):
    """A public law with capacity features answers differently for int2 and int8, and for MX/NF formats that
    no public table has."""
    from qscale.laws.fitting import FitData, fit_law
    from qscale.laws.predict import predict_formats
    from qscale.laws.public import public_fit_frame

    frame = public_fit_frame(target="log_ppl_ratio")
    law = fit_law(FitData("public", frame, "test"), "rate-distortion", "t-rd", scheme="family", save=False)
    preds = predict_formats(
        None, ["int2-g128", "int4-g128", "mxfp4-e2m1-b32", "int8-pc"], law, params_b=7, method="rtn"
    )
    v = {p.format: p.value for p in preds}
    assert v["int2-g128"] > v["int4-g128"] > v["int8-pc"]
    assert preds[0].features["eff_bits_gauss"] == pytest.approx(
        format_capacity("int2-g128")["eff_bits_gauss"]
    )
    assert preds[0].target == "log_ppl_ratio" and "log ppl ratio" in preds[0].unit
