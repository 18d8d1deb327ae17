"""`qscale demo` end to end on the (shared, cached) tiny zoo with a reduced sweep: collect, fit, predict, report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from qscale.cli import app
from qscale.collect.store import RunStore


@pytest.mark.slow
def test_demo_collects_fits_predicts_a_held_out_family_and_reports(tiny_zoo, tmp_path):
    spec = tmp_path / "demo-small.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "demo-small",
                "models": ["zoo:tiny"],
                "formats": ["int8-pc", "int3-g16"],
                "eval": {"seq_len": 32, "max_tokens": 512, "batch_size": 16},
                "features": ["sqnr_db"],
            }
        )
    )
    store, out = tmp_path / "runs.sqlite", tmp_path / "out"
    args = ["demo", "--store", str(store), "--spec", str(spec), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--estimators", "bits-only,size-bits"])
    assert res.exit_code == 0, res.output
    assert "[1/5] zoo: all tiny models present" in res.output
    for step in ("[2/5] collect", "[3/5] laws", "[4/5] predict qwen2", "[5/5] report"):
        assert step in res.output, res.output

    with RunStore(store) as st:
        frame = st.to_frame()
    assert len(frame) == 30 and set(frame["status"]) == {"ok"} and frame["family"].nunique() == 5

    held = pd.read_csv(out / "held_out_predictions.csv")
    assert len(held) == 6 and set(held["model"].str.replace(r"-[sml]$", "", regex=True)) == {"zoo:tiny-qwen2"}
    assert np.isfinite(held["predicted"]).all()
    printed = float(re.search(r"MAE ([0-9.e-]+) nats/token, Spearman", res.output).group(1))
    assert printed == pytest.approx((held["predicted"] - held["dnll"]).abs().mean(), rel=1e-3)
    # measured damage in the CSV is the stored damage of those runs
    merged = held.merge(frame, on=["model", "format"], suffixes=("", "_store"))
    assert np.allclose(merged["dnll"], merged["dnll_store"])
    assert (out / "report" / "laws.md").is_file()
    assert any((out / "models").iterdir())

    again = CliRunner().invoke(app, [*args, "--estimators", "bits-only"])  # resumable: nothing re-measured
    assert again.exit_code == 0 and "0 runs measured, 30 already there" in again.output
