"""Issue 15: the empty-store fit message names the target asked for (and says how to get runs)."""

from __future__ import annotations

import sqlite3

from typer.testing import CliRunner

from qscale.cli import app
from qscale.collect.store import RunStore

runner = CliRunner()


def test_empty_store_fit_message_names_the_requested_target(tmp_path):
    store = tmp_path / "empty.sqlite"
    RunStore(store).close()
    res = runner.invoke(app, ["fit", "--runs", str(store), "--target", "kld", "--no-save"])
    assert res.exit_code != 0
    assert "kld" in res.output and "dnll" not in res.output, res.output
    assert "qscale collect" in res.output
    res = runner.invoke(app, ["fit", "--runs", str(store), "--no-save"])
    assert res.exit_code != 0 and "no finished runs to fit dnll" in res.output, res.output


def test_fit_on_a_foreign_sqlite_file_is_a_one_line_error(tmp_path):
    db = tmp_path / "other.sqlite"
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    res = runner.invoke(app, ["fit", "--runs", str(db), "--no-save"])
    assert res.exit_code != 0 and "not a qscale run store" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
