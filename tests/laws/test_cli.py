"""qscale fit / laws list|show / predict through the CLI."""

import json

from typer.testing import CliRunner

from qscale.cli import app

runner = CliRunner()


def test_fit_public_list_show_predict(tmp_path):
    md = str(tmp_path)
    r = runner.invoke(
        app,
        [
            "fit",
            "--public",
            "--estimator",
            "bits-only,size-bits",
            "--cv",
            "table",
            "--models-dir",
            md,
            "--name",
            "pub",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "bits-only" in r.output and "size-bits" in r.output and "saved law pub" in r.output
    r = runner.invoke(app, ["laws", "list", "--models-dir", md])
    assert r.exit_code == 0 and r.output.startswith("pub ")
    r = runner.invoke(app, ["laws", "show", "pub", "--models-dir", md])
    assert r.exit_code == 0 and "coefficients (95% CI)" in r.output and '"target"' in r.output
    r = runner.invoke(
        app,
        [
            "predict",
            "--law",
            "pub",
            "--models-dir",
            md,
            "--params-b",
            "7",
            "--bits",
            "4",
            "--method",
            "gptq",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)["predictions"][0]
    assert out["lo"] < out["value"] < out["hi"] and out["features"]["bpw"] == 4.0


def test_cli_errors_are_clear(tmp_path):
    r = runner.invoke(app, ["fit", "--public", "--estimator", "forrest", "--models-dir", str(tmp_path)])
    assert r.exit_code == 2 and "Did you mean 'forest'" in r.output
    r = runner.invoke(app, ["fit", "--public", "--cv", "famly", "--no-save"])
    assert r.exit_code == 2 and "Did you mean 'family'" in r.output
    r = runner.invoke(app, ["fit", "--no-save"])
    assert r.exit_code == 2 and "--runs STORE or --public" in r.output
    r = runner.invoke(app, ["predict", "--law", "nope", "--models-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no law 'nope'" in r.output


def test_laws_and_report_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, qscale.laws.estimators, qscale.laws.fitting, qscale.laws.predict, qscale.laws.commands, "
        "qscale.report.build; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
