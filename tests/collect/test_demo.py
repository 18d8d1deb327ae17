"""`qscale demo` on the (shared, cached) tiny zoo with small sweeps: it works in its own folder and leaves the
repository's tracked data alone, prints every figure beside its baseline, and resumes."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from qscale.cli import app
from qscale.collect.store import RunStore

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("gpt2", "llama", "opt", "neox", "qwen2")


def _tree_hash(*paths: Path) -> dict[str, str]:
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f.relative_to(REPO))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _small_specs(tmp: Path) -> tuple[Path, Path]:
    zoo = tmp / "demo-small.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {
                "name": "demo-small",
                "models": [f"zoo:tiny-{f}-s" for f in FAMILIES],  # one model per family
                "formats": ["int8-pc", "int4-g16", "int3-g16"],
                "eval": {"seq_len": 32, "max_tokens": 512, "batch_size": 16},
                "features": ["sqnr_db"],
            }
        )
    )
    real = tmp / "demo-real-small.yaml"  # the real-model step, on a zoo model (its own profile calibration)
    real.write_text(
        yaml.safe_dump(
            {
                "name": "demo-real-small",
                "models": ["zoo:tiny-llama-m"],
                "formats": ["int8-pc", "nf4-g16", "int4-g16", "int3-g16"],
                "eval": {"seq_len": 64, "max_tokens": 512, "batch_size": 8},
            }
        )
    )
    return zoo, real


def _table_row(output: str, label: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.strip().startswith(label))
    return line.strip()[len(label) :].split()


@pytest.mark.slow
def test_demo_writes_only_its_folder_prints_baselines_and_resumes(tiny_zoo, tmp_path, monkeypatch):
    zoo_spec, real_spec = _small_specs(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # the default --out is relative to the current directory
    elsewhere = tmp_path / "profile-cache"
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(elsewhere))  # the shared profile cache is not used either
    tracked = _tree_hash(REPO / "data" / "runs.sqlite", REPO / "models")
    args = [
        "demo",
        "--spec",
        str(zoo_spec),
        "--real-spec",
        str(real_spec),
        "--estimators",
        "bits-only,size-bits",
    ]

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = work / "qscale-demo"
    assert sorted(p.name for p in work.iterdir()) == ["qscale-demo"]  # nothing else in the current directory
    assert not elsewhere.exists()
    assert _tree_hash(REPO / "data" / "runs.sqlite", REPO / "models") == tracked
    for step in (
        "[1/6] zoo: all tiny models present",
        "[2/6] collect",
        "[3/6] laws",
        "[5/6] laws report",
        "[6/6] real",
    ):
        assert step in res.output, res.output
    assert "predict the held-out family qwen2 (1 model, 3 runs" in res.output

    # the demo's own run store: every planned run, measured here
    with RunStore(out / "runs.sqlite") as st:
        frame = st.to_frame()
    assert len(frame) == 15 and set(frame["status"]) == {"ok"} and frame["family"].nunique() == 5
    assert "15 runs measured, 0 already there" in res.output

    # the held-out figures: the chosen law beside the bits-only law and the training mean, as recomputed
    held = pd.read_csv(out / "held_out_predictions.csv")
    assert len(held) == 3 and set(held["model"]) == {"zoo:tiny-qwen2-s"}
    summary = json.loads((out / "qscale-demo.json").read_text())
    laws = summary["laws"]
    assert laws["target"] == "kld" and laws["held_out"] == "qwen2" and laws["n_train"] == 12
    chosen = laws["chosen"]
    columns = {f"{chosen} (chosen)": "predicted", "training mean": "training_mean"}
    if chosen != "bits-only":
        columns["bits-only baseline"] = "bits_only"
    assert set(laws["table"]) == set(columns)
    for label, col in columns.items():
        mae = float((held[col] - held["kld"]).abs().mean())
        cv_mae, held_mae = (float(v) for v in _table_row(res.output, label)[:2])
        assert held_mae == pytest.approx(mae, rel=1e-3), label
        assert laws["table"][label]["held_out"]["mae"] == pytest.approx(mae, rel=1e-9)
        assert math.isfinite(cv_mae) and cv_mae > 0
    # the measured damage in the CSV is the stored damage of those runs
    merged = held.merge(frame, on=["model", "format"], suffixes=("", "_store"))
    assert len(merged) == 3 and np.allclose(merged["kld"], merged["kld_store"])
    assert (out / "models" / f"demo-{chosen}").is_dir()
    # the laws report: the printed command writes it into the demo's folder too
    line = next(ln for ln in res.output.splitlines() if ln.startswith("[5/6] laws report"))
    cmd = shlex.split(line.split(": ", 1)[1])
    assert cmd[:2] == ["qscale", "report"]
    rep = CliRunner().invoke(app, cmd[1:])
    assert rep.exit_code == 0, rep.output
    assert (out / "report" / "laws.md").is_file()

    # the real-model step: predicted beside measured (from its own store), baselines beside the summary figures
    real = summary["real"]
    with RunStore(out / "runs-real.sqlite") as st:
        rf = st.to_frame()
    measured = dict(zip(rf["format"], rf["kld"], strict=True))
    assert len(real["formats"]) == 4
    for row in real["formats"]:
        assert row["measured"] == pytest.approx(measured[row["format"]])
        assert row["lo"] <= row["predicted"] <= row["hi"]
    assert "sensitivity profile: computed" in res.output
    assert re.search(
        r"median \|ln\(pred/meas\)\| \S+ vs \S+ for the other formats' measured geometric mean \(baseline\)",
        res.output,
    )
    assert re.search(
        r"Spearman over 4 formats \S+ vs \S+ for fewer bits = more damage \(baseline\)", res.output
    )
    plan = real["plan"]
    assert Path(plan["path"]).parent == out and plan["bpw"] <= 4.5 + 1e-9
    assert "baseline, best uniform candidate within the budget" in res.output
    assert plan["measured"]["kld"] > 0 and not plan["measured"]["reused"]
    if "best_uniform_measured" in plan:
        assert "baseline, best measured uniform format within the budget" in res.output

    # a second invocation resumes: nothing is measured again, and it says so
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resuming: finished runs are reused" in again.output
    assert "0 runs measured, 15 already there" in again.output
    assert "0 runs measured, 4 already there" in again.output
    assert "sensitivity profile: reused" in again.output
    assert re.search(r"plan measured KL \S+ \(reused", again.output)
    with RunStore(out / "runs.sqlite") as st:
        assert len(st.to_frame()) == 15
    assert sorted(p.name for p in work.iterdir()) == ["qscale-demo"]
    assert _tree_hash(REPO / "data" / "runs.sqlite", REPO / "models") == tracked


@pytest.mark.parametrize("where", ["models", "data/sweeps", "reports/demo"])
def test_demo_refuses_an_out_folder_inside_the_tracked_data(where):
    res = CliRunner().invoke(app, ["demo", "--out", str(REPO / where)])
    assert res.exit_code == 2
    assert "inside the repository's tracked" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plan-bpw", "0"], "--plan-bpw must be in (0, 32]"),
        (["--estimators", "forrest"], "did you mean 'forest'?"),
        (["--spec", "no-such-sweep.yaml"], "no-such-sweep.yaml"),
    ],
)
def test_demo_mistakes_are_one_line_before_any_work(tmp_path, extra, message):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), *extra])
    assert res.exit_code == 2, res.output
    assert message.lower() in res.output.lower() and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "thesis.tex").write_text("keep me")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did not make" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_real_step_says_which_command_builds_a_missing_panel_model(tmp_path, monkeypatch):
    from qscale.collect.demo import DemoError
    from qscale.workflows import demo

    monkeypatch.setenv("QSCALE_PANEL_DIR", str(tmp_path / "no-panel"))
    lines: list[str] = []
    assert demo.real_model(tmp_path, demo.real_spec_path(), lines.append) is None
    assert "skipped, panel:smollm2-135m is not built: `qscale panel build smollm2-135m`" in lines[-1]
    assert "qscale demo --real" in lines[-1]

    def offline(*args, **kwargs):
        raise OSError("no package index reachable")

    monkeypatch.setattr("qscale.lm.panel.build_panel", offline)
    with pytest.raises(
        DemoError, match=r"run `qscale panel build smollm2-135m` and then `qscale demo` again"
    ):
        demo.real_model(tmp_path, demo.real_spec_path(), lines.append, build=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written before the model exists
