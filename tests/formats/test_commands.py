"""``qscale formats``: table, JSON, one-spec description, errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from qscale.cli import app
from qscale.formats import list_formats

runner = CliRunner()


def test_formats_json_lists_catalogue() -> None:
    res = runner.invoke(app, ["formats", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["spec"] for r in rows] == list(list_formats())
    by_spec = {r["spec"]: r for r in rows}
    assert by_spec["int4-g128"]["bits_per_element"] == 4.125 and by_spec["int4-g128"]["block"] == 128
    assert by_spec["mxfp4-e2m1-b32"]["family"] == "mx" and by_spec["nf4-g64"]["element_bits"] == 4


def test_formats_table_and_set() -> None:
    res = runner.invoke(app, ["formats", "--set", "all-4bit"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "int4-g128" in res.output and "mxfp4-e2m1-b32" in res.output and "int8-pc" not in res.output


def test_formats_describe_one_spec() -> None:
    res = runner.invoke(app, ["formats", "mxint4_128"])
    assert res.exit_code == 0, res.output
    assert "mxint4_128 -> mxint4-b128" in res.output and "4.0625" in res.output
    res = runner.invoke(app, ["formats", "nf4", "--json"])
    info = json.loads(res.output)
    assert info["spec"] == "nf4-g64" and info["dict"]["kind"] == "nf"


def test_formats_bad_spec_exits_2_with_suggestion() -> None:
    res = runner.invoke(app, ["formats", "int4-g128-asymm"])
    assert res.exit_code == 2
    assert "did you mean" in res.output and "int4-g128-asym" in res.output
    res = runner.invoke(app, ["formats", "--set", "all-4bits"])
    assert res.exit_code == 2 and "all-4bit" in res.output


def test_formats_fits_an_80_column_terminal() -> None:
    """One line per catalogue format, none wider than 80 columns (it used to wrap to 326 lines)."""
    from qscale.formats import list_formats

    res = runner.invoke(app, ["formats"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line.split()[0] for line in lines if line and line.split()[0] in set(list_formats())]
    assert rows == list(list_formats())
