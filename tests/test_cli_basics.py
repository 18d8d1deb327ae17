"""CLI edges a first user hits: --version, refusing to overwrite a non-empty --out."""

from __future__ import annotations

from typer.testing import CliRunner

import qscale
from qscale.cli import app

runner = CliRunner()


def _flat(text: str) -> str:
    """The error text without rich's box drawing and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == qscale.__version__


def test_quantize_refuses_a_non_empty_out(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "config.json").write_text("{}")
    r = runner.invoke(app, ["quantize", "--model", "zoo:tiny-llama-m", "-f", "int4-pc", "--out", str(out)])
    assert r.exit_code == 2 and "is not empty" in _flat(r.output) and "--force" in _flat(r.output)
    assert (out / "config.json").read_text() == "{}"  # nothing written
    f = tmp_path / "file"
    f.write_text("x")
    r = runner.invoke(app, ["quantize", "--model", "zoo:tiny-llama-m", "-f", "int4-pc", "--out", str(f)])
    assert r.exit_code == 2 and "is a file" in _flat(r.output)
