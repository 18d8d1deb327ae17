"""Report writers (exact text), the runs pivot, and write_report end to end on a synthetic run export."""

import math

import numpy as np
import pandas as pd
import pytest

from qscale.laws.cv import cross_validate
from qscale.laws.fitting import load_fit_data
from qscale.laws.registry import make_estimator
from qscale.report.tables import (
    diverged_mask,
    fmt_mae,
    latex_escape,
    runs_table,
    to_html,
    to_latex,
    to_markdown,
    write_table,
)

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
            "--no-panel",
            "--no-progress",
            "--estimator",
            "bits-only,sqnr-only,second-order",
            "--models-dir",
            str(out / "none"),
        ],
    )
    assert r.exit_code == 0, r.output
    return out / "laws.md"


def test_write_report_public_section(tmp_path):
    """The public section summarises the committed CV table (reports/public_cv.csv) per target and writes the
    detail to public_laws.md; the chosen law's numbers in the summary are the CV table's."""
    from qscale.report.build import write_report
    from qscale.report.public import DEFAULT_CV_CACHE, choose

    path = write_report(out=tmp_path, runs=None, panel=None, models_dir=tmp_path / "m")
    text = path.read_text()
    assert "## Public results (`data/public/results.csv` + the real panel's runs)" in text
    cv = pd.read_csv(DEFAULT_CV_CACHE, keep_default_na=False, na_values=[""])
    for target in ("log_ppl_ratio", "kld", "acc_drop"):
        best = choose(cv, target)
        r = cv[(cv["target"] == target) & (cv["scheme"] == "family") & (cv["estimator"] == best)].iloc[0]
        assert f"| {best} | {r['mae']:.4g} | {r['mae_bits_only']:.4g} | {r['ratio']:.2f} |" in text
    detail = (tmp_path / "public_laws.md").read_text()
    assert "### GPTQ vs RTN at equal bits" in detail and "## Training tokens D" in detail
    assert (tmp_path / "pred_vs_measured_public.png").exists()


def test_diverged_mae_prints_diverged():
    """A fit whose CV MAE is absurd (the committed report's size-bits/size: 8.7e21 on a target with spread 0.005)
    shows 'diverged' in its MAE, RMSE and R^2 cells; its rank and coverage scores, and sane rows, stay numbers."""
    scores = pd.DataFrame(
        {
            "estimator": ["bits-only", "size-bits"],
            "scheme": ["size", "size"],
            "n": [150, 150],
            "mae": [0.00264, 8.673e21],
            "rmse": [0.005407, 5.58e22],
            "r2": [-0.03421, -1.101e50],
            "spearman": [-0.1901, -0.03909],
            "coverage": [0.8933, 1.0],
            "mae_largest": [0.002652, 0.002622],
        }
    )
    spread = 0.005335
    text = to_markdown(scores, mask=diverged_mask(scores, spread))
    rows = text.splitlines()
    assert (
        rows[1] == "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )  # still numeric columns
    assert (
        rows[2] == "| bits-only | size | 150 | 0.00264 | 0.005407 | -0.03421 | -0.1901 | 0.8933 | 0.002652 |"
    )
    assert rows[3] == "| size-bits | size | 150 | diverged | diverged | diverged | -0.03909 | 1 | 0.002622 |"
    assert "e+21" not in text and "e+50" not in text
    # the threshold is 100x the spread: just under it is a number, just over it is not
    assert (
        fmt_mae(99 * spread, spread) == f"{99 * spread:.4g}" and fmt_mae(101 * spread, spread) == "diverged"
    )
    assert fmt_mae(float("nan"), spread) == "-"  # not scored is not diverged


def test_report_score_table_marks_diverged(tmp_path):
    """The report's own score table applies the rule with the measured target's spread."""
    from qscale.report.build import _score_table

    scores = pd.DataFrame(
        {
            "estimator": ["a", "b"],
            "scheme": ["family"] * 2,
            "n": [10, 10],
            "mae": [0.1, 1e9],
            "note": ["", ""],
        }
    )
    out = _score_table(scores, spread=0.2).splitlines()
    assert out[2] == "| a | family | 10 | 0.1 |" and out[3] == "| b | family | 10 | diverged |"


def test_report_compares_and_chooses_through_laws_fitting(tmp_path):
    """One compare -> choose (issue 16 §2): the report's scores and held-out predictions are
    ``laws.fitting.compare_estimators``'s, its pick is ``choose``'s; a preset that does not apply to zoo data is
    a note in the report and an error for ``qscale fit``."""
    from qscale.laws.estimators import LawError
    from qscale.laws.fitting import choose, compare_estimators
    from qscale.report.build import _best, evaluate

    runs = tmp_path / "runs.csv"
    synthetic_runs().to_csv(runs, index=False)
    data = load_fit_data(runs=runs)
    names = ["bits-only", "second-order", "capacity-only"]
    ticks: list[str] = []
    scores, results = evaluate(data, names, ("family", "size"), tick=ticks.append)
    assert ticks[0] == "bits-only / family" and len(ticks) == 6
    assert set(results) == {(n, s) for n in ("bits-only", "second-order") for s in ("family", "size")}
    capacity = scores[scores["estimator"] == "capacity-only"]
    assert len(capacity) == 2 and capacity["note"].str.contains("public-table columns").all()
    ref = compare_estimators(data, names[:2], ("family", "size"))
    scored = scores[scores["estimator"] != "capacity-only"].reset_index(drop=True)
    pd.testing.assert_frame_equal(scored[ref.columns], ref, check_dtype=False)
    assert _best(scores, "family") == choose(ref, "family")
    assert results[("second-order", "family")].scores["mae"] == pytest.approx(
        cross_validate(make_estimator("second-order", "zoo", data.frame), data.frame, "family").scores["mae"]
    )
    with pytest.raises(LawError, match="public-table columns"):
        compare_estimators(data, names, ("family",))
    assert _best(scores.iloc[:0].assign(mae=[]), "family") is None
