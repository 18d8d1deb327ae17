"""Report writers (exact text), the runs pivot, and write_report end to end on a synthetic run export."""

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.cv import cross_validate
from qscale.laws.fitting import load_fit_data
from qscale.laws.registry import make_estimator
from qscale.report.tables import latex_escape, runs_table, to_html, to_latex, to_markdown, write_table

FORMATS = {
    "int8-pc": (8.0, 8, "int", 40.0),
    "int4-g16": (5.0, 4, "int", 22.0),
    "fp4-e2m1-g16": (5.0, 4, "fp", 20.0),
    "int3-g16": (4.0, 3, "int", 15.0),
}


def synthetic_runs(seed: int = 0) -> pd.DataFrame:
    """3 families x 3 sizes x 4 formats; dnll = 20 N^-0.25 10^(-SQNR/10) x noise (a known law)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam in ("gpt2", "llama", "opt"):
        for i, n in enumerate((2e5, 8e5, 3e6)):
            for spec, (bpe, eb, ff, s0) in FORMATS.items():
                s = s0 + rng.normal(0, 1.5)
                d = 20 * n**-0.25 * 10 ** (-s / 10) * math.exp(rng.normal(0, 0.1))
                rows.append(
                    {
                        "model": f"tiny-{fam}-{'sml'[i]}",
                        "family": fam,
                        "n_params": 2 * n,
                        "n_nonembed": n,
                        "train_tokens": 20 * n,
                        "format": spec,
                        "method": "rtn",
                        "bits_per_element": bpe,
                        "element_bits": eb,
                        "fmt_family": ff,
                        "float_nll": 4.0,
                        "nll": 4.0 + d,
                        "dnll": d,
                        "sqnr_db": s,
                        "status": "ok",
                    }  # fmt: skip
                )
    return pd.DataFrame(rows)


def test_markdown_latex_html_exact():
    df = pd.DataFrame({"format": ["int4_g|128", "a&b<c>"], "dnll": [0.012345, float("nan")], "n": [3, 40]})
    assert to_markdown(df) == (
        "| format | dnll | n |\n| --- | ---: | ---: |\n| int4_g\\|128 | 0.01235 | 3 |\n| a&b<c> | - | 40 |"
    )
    assert to_latex(df).splitlines() == [
        "\\begin{tabular}{lrr}",
        "\\toprule",
        "format & dnll & n \\\\",
        "\\midrule",
        "int4\\_g|128 & 0.01235 & 3 \\\\",
        "a\\&b<c> & - & 40 \\\\",
        "\\bottomrule",
        "\\end{tabular}",
    ]
    h = to_html(df)
    assert "<td>a&amp;b&lt;c&gt;</td>" in h and '<td style="text-align:right">0.01235</td>' in h
    assert latex_escape("50% of $x_1$ ~ {y}") == "50\\% of \\$x\\_1\\$ \\textasciitilde{} \\{y\\}"


def test_write_table_all_formats(tmp_path):
    df = pd.DataFrame({"a": ["x"], "b": [1.5]})
    paths = write_table(df, tmp_path / "t", title="T")
    assert [p.name for p in paths] == ["t.md", "t.csv", "t.tex", "t.html"]
    assert pd.read_csv(tmp_path / "t.csv").equals(df)
    with pytest.raises(ValueError, match="unknown table format 'xls'"):
        write_table(df, tmp_path / "t", formats=("xls",))


def test_runs_table_pivot():
    df = synthetic_runs()
    piv = runs_table(df)
    assert list(piv.columns) == ["model", "int8-pc", "fp4-e2m1-g16", "int4-g16", "int3-g16"]  # by bits desc
    assert len(piv) == 9 and piv["model"].iloc[0] == "tiny-gpt2-s"
    one = df[(df.model == "tiny-llama-m") & (df.format == "int3-g16")]["dnll"].iloc[0]
    assert piv.set_index("model").loc["tiny-llama-m", "int3-g16"] == one


def test_write_report_zoo_end_to_end(tmp_path):
    runs = tmp_path / "runs.csv"
    synthetic_runs().to_csv(runs, index=False)
    out = tmp_path / "reports"
    path = qscale_report(runs, out)
    text = path.read_text()
    assert path.name == "laws.md" and "## Zoo runs, target dnll (36 runs, 9 models, 3 families" in text
    assert "### Targets (zoo, dnll, measured)" in text and "Spearman within llama models" in text
    assert ("## Zoo runs, target kld" in text) == ("kld" in synthetic_runs().columns)
    for f in (
        "runs.md",
        "runs.csv",
        "runs.tex",
        "runs.html",
        "dnll_vs_bits.png",
        "pred_vs_measured_zoo.png",
        "cv_zoo.csv",
    ):
        assert (out / f).exists(), f
    assert (out / "dnll_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table's number is the one cross_validate computes directly
    data = load_fit_data(runs=runs)
    res = cross_validate(make_estimator("second-order", "zoo", data.frame), data.frame, "family")
    row = next(line for line in text.splitlines() if line.startswith("| second-order | family |"))
    assert f"| {res.scores['mae']:.4g} |" in row
    # second-order law recovers the SQNR slope d ~ 1 in its coefficient table
    coef = next(line for line in text.splitlines() if line.startswith("| d |"))
    assert abs(float(coef.split("|")[2]) - 1.0) < 0.1


def qscale_report(runs, out):
    from typer.testing import CliRunner

    from qscale.cli import app

    r = CliRunner().invoke(
        app,
        [
            "report",
            "--runs",
            str(runs),
            "--out",
            str(out),
            "--no-public",
            "--estimator",
            "bits-only,sqnr-only,second-order",
            "--models-dir",
            str(out / "none"),
        ],
    )
    assert r.exit_code == 0, r.output
    return out / "laws.md"


def test_write_report_public_section(tmp_path):
    from qscale.report.build import write_report

    path = write_report(
        out=tmp_path, estimators="bits-only,kumar", schemes=("table",), models_dir=tmp_path / "m"
    )
    text = path.read_text()
    assert "## Public results (283 usable rows" in text and "### Targets (public, measured)" in text
    assert "| kumar | 246 |" in text and "(D known) | 246 |" in text
    assert (tmp_path / "pred_vs_measured_public.png").exists()
