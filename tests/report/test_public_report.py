"""The public-laws report (issue 14): CV rows beside bits-only on the same rows, and the seed findings,
checked against numbers recomputed from the raw CSV."""

from __future__ import annotations

import pandas as pd
import pytest

from qscale.laws.public import DEFAULT_PUBLIC_CSV, load_public
from qscale.report.public import choose, cv_table, finding_calibration, finding_gptq_vs_rtn


@pytest.fixture(scope="module")
def table():
    return load_public().table


def test_cv_rows_compare_with_bits_only_on_the_same_rows():
    cv = cv_table(
        "kld", schemes=("family",), names=["bits-only", "kumar", "capacity-only"], log=lambda m: None
    )
    r = cv.set_index("estimator")
    assert r.loc["bits-only", "ratio"] == pytest.approx(1.0)  # bits-only against itself
    # capacity-only needs a qscale format: fewer rows, and its baseline is refitted on exactly those rows
    assert r.loc["capacity-only", "n"] < r.loc["bits-only", "n"]
    assert r.loc["capacity-only", "mae_bits_only"] != pytest.approx(r.loc["bits-only", "mae"])
    for name in r.index:
        assert r.loc[name, "ratio"] == pytest.approx(r.loc[name, "mae"] / r.loc[name, "mae_bits_only"])
        assert 0.0 <= r.loc[name, "coverage"] <= 1.0
    assert choose(cv, "kld") in set(r.index)


def test_calibration_finding_matches_the_raw_rows():
    raw = pd.read_csv(DEFAULT_PUBLIC_CSV)
    t01 = raw[(raw["table_id"] == "T01_llamacpp_L3-8B_scoreboard") & (raw["metric"] == "kld_mean_vs_fp16")]
    q2 = t01[t01["datatype"] == "gguf:q2_K"]
    imx = q2["notes"].str.extract(r"imatrix=([^;]+)")[0].str.strip()
    per = q2.groupby(imx)["value"].median()
    none, sized = per["None"], per.drop("None")
    line = next(x for x in finding_calibration(load_public().table) if x.startswith("| gguf:q2_K |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(none, rel=1e-3)
    assert float(cells[2]) == pytest.approx(sized.median(), rel=1e-3)
    assert int(cells[3]) == len(sized) == 5  # WikiText imatrices of 1k, 10k, 100k, 1m and 10m tokens
    spread = sized.max() / sized.min() - 1
    assert float(cells[5].rstrip("%")) == pytest.approx(100 * spread, abs=0.06)


def test_gptq_beats_rtn_at_low_bits_on_paired_rows(table):
    lines = finding_gptq_vs_rtn(table)
    rows = {(c[0], c[1]): c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines)}
    three = rows[("log_ppl_ratio", "3")]
    assert int(three[2]) >= 3
    assert float(three[3].rstrip("%")) >= 80  # GPTQ better on most paired 3-bit rows
    assert float(three[4]) > float(three[5])  # RTN median damage above GPTQ's
