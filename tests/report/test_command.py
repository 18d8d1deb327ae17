"""`qscale report` as README.md writes it rebuilds the committed reports/laws.md's sections from the committed
inputs without changing them; the real-panel section's predictions are the cached raw profile predictions
through the shipped calibration."""

import hashlib
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qscale.cli import app
from qscale.report.build import DEFAULT_PANEL, DEFAULT_PROFILE_CACHE, panel_predictions, write_report

ROOT = Path(__file__).resolve().parents[2]


def readme_report_command() -> list[str]:
    """The `qscale report ...` line of README.md's command block, as argv (comment stripped)."""
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if re.match(r"qscale report\b", ln)]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0], comments=True)
    assert argv[:2] == ["qscale", "report"]
    return argv[2:]


def sections(text: str) -> list[tuple[str, str | None]]:
    """(section name, the data source it names in backticks) per `## ` heading; counts in the parentheses
    are numbers that change with the data, not the section list."""
    out = []
    for line in text.splitlines():
        if line.startswith("## "):
            src = re.search(r"`([^`]+)`\)$", line)
            out.append((re.sub(r" \(.*\)$", "", line[3:]), src.group(1) if src else None))
    return out


def figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def tracked_inputs() -> dict[str, str]:
    paths = [*ROOT.glob("data/*.sqlite"), ROOT / "data" / "profile_raw.json", *ROOT.glob("data/runs/*")]
    paths += [p for p in (ROOT / "models").rglob("*") if p.is_file()]
    return {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_readme_report_command_rebuilds_committed_sections(tmp_path):
    committed = (ROOT / "reports" / "laws.md").read_text()
    before = tracked_inputs()
    argv = readme_report_command()
    # the README's command, writing elsewhere, with one estimator (the section list does not depend on it)
    r = CliRunner().invoke(app, ["report", *argv, "--out", str(tmp_path), "--estimator", "bits-only"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "laws.md").read_text()
    assert sections(text) == sections(committed)
    assert [s for s, _ in sections(committed)][:3] == [
        "Zoo runs, target dnll",
        "Zoo runs, target kld",
        "Real panel: profile-law prediction vs measured KL",
    ]
    assert figures(text) == figures(committed)
    for f in figures(text):
        assert (tmp_path / f).is_file() and (ROOT / "reports" / f).is_file(), f
    assert tracked_inputs() == before  # run stores, profile cache and shipped laws only read


def _panel_rtn_export() -> pd.DataFrame:
    """The finished RTN runs on enwiki (the profile law's corpus) of the committed flat export of the panel store
    (an independent reference)."""
    export = pd.read_parquet(ROOT / "data" / "runs" / "panel_native.parquet")
    keep = (
        (export["status"] == "ok") & (export["method"] == "rtn") & (export["eval_corpus"] == "enwiki_gensim")
    )
    return export[keep]


def test_panel_predictions_are_cached_raw_through_shipped_calibration():
    df, notes = panel_predictions(DEFAULT_PANEL, DEFAULT_PROFILE_CACHE, ROOT / "models", alpha=0.1)
    assert notes == []
    # independent references: the flat export of the same runs, the cache file and the calibration file
    export = _panel_rtn_export()
    assert sorted(zip(df["model"], df["format"], strict=True)) == sorted(
        zip(export["model"], export["format"], strict=True)
    )
    meas = export.set_index(["model", "format"])["kld"]
    cache = json.loads(DEFAULT_PROFILE_CACHE.read_text())
    cal = json.loads((ROOT / "models" / "profile-kld.json").read_text())
    for _, r in df.iterrows():
        raw = cache[r["model"]]["raw"][r["format"]]
        if cal.get("probe"):  # a probe law reads raw x the model's noise-probe factor
            raw *= cache[r["model"]]["probe"]["factor"]
        v = math.exp(cal["a_"] + cal["b_"] * math.log(raw))
        assert r["kld"] == pytest.approx(meas[(r["model"], r["format"])], rel=1e-12)
        assert r["pred"] == pytest.approx(v, rel=1e-9)
        assert (r["lo"], r["hi"]) == pytest.approx(
            (v * math.exp(-cal["q_"]), v * math.exp(cal["q_"])), rel=1e-9
        )


def test_panel_section_states_why_runs_are_left_out(tmp_path):
    cache = json.loads(DEFAULT_PROFILE_CACHE.read_text())
    qwen = "panel:qwen2.5-coder-0.5b"
    cache[qwen]["identity"] = "other-weights"
    del cache["panel:smollm2-135m"]["raw"]["int8-pc"]
    bad = tmp_path / "raw.json"
    bad.write_text(json.dumps(cache))
    df, notes = panel_predictions(DEFAULT_PANEL, bad, ROOT / "models")
    assert qwen not in set(df["model"])
    pairs = set(zip(df["model"], df["format"], strict=True))
    assert ("panel:smollm2-135m", "int8-pc") not in pairs and ("panel:qwen2.5-coder-1.5b", "int8-pc") in pairs
    runs = _panel_rtn_export()["model"].value_counts()
    n_qwen, n_smol = int(runs[qwen]), int(runs["panel:smollm2-135m"])
    assert n_qwen >= 11
    assert any(
        n.startswith(f"{qwen}: left out ({n_qwen} runs): the cached raw predictions are for other")
        for n in notes
    )
    assert any(
        n.startswith(f"panel:smollm2-135m: 1 of {n_smol} runs left out, no cached raw prediction (int8-pc)")
        for n in notes
    )
    # no cache at all: the section says so instead of failing the report
    path = write_report(
        out=tmp_path / "r", public=False, panel=DEFAULT_PANEL, profile_cache=tmp_path / "none.json"
    )
    text = path.read_text()
    assert "## Real panel: profile-law prediction vs measured KL (`data/runs_panel_native.sqlite`)" in text
    assert "Skipped: no cached raw profile predictions at " in text
    assert not (tmp_path / "r" / "pred_vs_measured_panel.png").exists()


def test_report_nothing_to_report_is_one_line():
    r = CliRunner().invoke(app, ["report", "--no-zoo", "--no-panel", "--no-public"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "nothing to report" in r.output


def test_report_missing_store_is_one_line(tmp_path, capsys):
    """Through the CLI's one error path (qscale.cli.main): one line, exit 2."""
    from qscale.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["report", "--runs", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path)])
    text = capsys.readouterr().err
    assert exc.value.code == 2 and text.startswith("error: ")
    assert text.strip().count("\n") == 0 and "nope.sqlite" in text
    assert not np.any([p.suffix == ".md" for p in tmp_path.iterdir()])


def test_report_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """A plain ValueError inside the report is a bug, not a user's mistake: it is not turned into one line."""
    from qscale.cli import main
    from qscale.report import build

    def broken(**kwargs):
        raise ValueError("a bug deep in the report")

    monkeypatch.setattr(build, "write_report", broken)
    with pytest.raises(ValueError, match="a bug deep in the report"):
        main(["report", "--no-zoo", "--no-panel", "--out", str(tmp_path)])
