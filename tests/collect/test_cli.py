"""`qscale collect`, `qscale runs list|show|export` through the real CLI app."""

from __future__ import annotations

import pandas as pd
import yaml
from typer.testing import CliRunner

from qscale.cli import app

runner = CliRunner()


def _spec_file(tmp_path, models, formats=("int8-pc", "int4-g32")):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "models": [str(m) for m in models],
                "formats": list(formats),
                "eval": {"seq_len": 64, "max_tokens": 512},
                "features": ["sqnr_db"],
            }
        )
    )
    return path


def test_collect_then_inspect_and_export(tiny_models, tmp_path):
    spec = _spec_file(tmp_path, tiny_models[:1])
    store = tmp_path / "runs.sqlite"

    dry = runner.invoke(app, ["collect", str(spec), "--store", str(store), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "cli: 2 runs = 1 models x 2 formats" in dry.output and "int4-g32 | rtn" in dry.output
    assert not store.exists()  # a dry run writes nothing

    res = runner.invoke(app, ["collect", str(spec), "--store", str(store), "--no-progress", "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert "1 planned, 1 measured ok" in res.output
    res = runner.invoke(app, ["collect", str(spec), "--store", str(store), "--no-progress"])
    assert "2 planned, 1 measured ok, 0 failed, 1 already in store" in res.output

    listing = runner.invoke(app, ["runs", "list", "--store", str(store)], env={"COLUMNS": "250"})
    assert listing.exit_code == 0 and "int4-g32" in listing.output and "2 ok, 0 error" in listing.output

    out = tmp_path / "runs.parquet"
    exp = runner.invoke(
        app, ["runs", "export", "--store", str(store), "--format", "parquet", "--out", str(out)]
    )
    assert exp.exit_code == 0 and "wrote 2 runs" in exp.output
    frame = pd.read_parquet(out)
    key = frame.loc[frame["format"] == "int8-pc", "run_key"].iloc[0]

    show = runner.invoke(app, ["runs", "show", key[:10], "--store", str(store)])
    assert show.exit_code == 0, show.output
    assert (
        f'"run_key": "{key}"' in show.output
        and '"provenance"' in show.output
        and '"torch_version"' in show.output
    )

    csv = tmp_path / "runs.csv"
    exp = runner.invoke(app, ["runs", "export", "--store", str(store), "--out", str(csv), "--detail"])
    assert exp.exit_code == 0
    detail = pd.read_csv(csv)
    assert "time_eval_s" in detail.columns and len(detail) == 2
    assert detail.set_index("run_key").loc[key, "nll"] == frame.set_index("run_key").loc[key, "nll"]


def test_cli_errors_name_the_problem(tmp_path, tiny_models):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [str(tiny_models[0])], "formats": ["int8", "int33"]}))
    res = runner.invoke(app, ["collect", str(bad), "--dry-run"])
    assert res.exit_code == 2
    assert "formats[1]: unknown format 'int33'" in res.output

    spec = _spec_file(tmp_path, tiny_models[:1])
    res = runner.invoke(app, ["collect", str(spec), "--backend", "rey"])
    assert (
        res.exit_code == 2
        and "unknown backend 'rey'. Did you mean 'ray'? Valid choices: local, ray." in res.output
    )

    res = runner.invoke(app, ["runs", "list", "--store", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 2 and "no run store" in res.output
