"""``qscale corpora``: the table lists every corpus with per-split counts that match read_split."""

from __future__ import annotations

from typer.testing import CliRunner

from qscale.cli import app
from qscale.corpora import read_split


def test_corpora_table():
    res = CliRunner().invoke(app, ["corpora"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in ("enwiki_gensim", "austen", "kjv", "shakespeare", "mobydick", "lee_news"):
        assert name in res.output
    test = read_split("lee_news", "test")
    assert f"{len(test)} / {sum(len(d.split()) for d in test):,}" in res.output


def test_corpora_bad_name():
    res = CliRunner().invoke(app, ["corpora", "austin"])
    assert res.exit_code != 0
    assert "Did you mean 'austen'" in res.output
