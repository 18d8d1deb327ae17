"""The one error path of the CLI (issue 17): a user's mistake prints one line naming the problem, exit 2, no
traceback; a bug keeps its traceback. Walks ordinary mistakes through the real entry point, ``qscale.cli.main``."""

from __future__ import annotations

import pytest

from qscale.cli import main, user_error


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_tokenizer):
    from qscale.lm.zoo import random_model

    d = tmp_path_factory.mktemp("cli-err") / "m"
    lm = random_model("llama", shared_tokenizer)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


CASES = [
    (["quantize", "--model", "/nonexistent/model", "-f", "int4-g128"], "not found"),
    (["eval", "--model", "{empty}", "-f", "int4-g128"], "without config.json"),
    (["eval", "--model", "zoo:no-such-model"], "zoo model"),
    (["eval", "--model", "{model}", "--device", "cuda:7"], "--device cuda:7"),
    (["eval", "--model", "{model}", "--device", "tpu"], "unknown device"),
    (
        ["quantize", "--model", "{model}", "-f", "int4-g16", "--include", "nomatch*"],
        "matched no linear layer",
    ),
    (["eval", "--model", "{model}", "--batch-size", "0"], "batch-size"),
    (
        ["quantize", "--model", "{model}", "-f", "int4-g16", "--method", "gptq", "--calib-samples", "-3"],
        "calib-samples",
    ),
    (["quantize", "--model", "{model}", "-f", "int99"], "int99"),
    (["plan", "--model", "/nonexistent/model", "--target-bpw", "4"], "not found"),
    (["export", "{empty}/plan.json", "--to", "llama.cpp"], "does not exist"),
    (["eval", "--model", "{garbage_gguf}"], "not a GGUF file"),
    (["eval", "--model", "{empty_gguf}"], "is empty"),
    # click/typer usage errors: one line, not a box
    (["evl", "--model", "{model}"], "Did you mean 'eval'? Valid commands: "),
    (["runs", "lst"], "Did you mean 'list'? Valid commands: list, show, export"),
    (["eval"], "Missing option '--model'"),
    (["eval", "--model", "{model}", "--seq-len", "many"], "--seq-len"),
    (["eval", "--modl", "{model}"], "--model"),
    (["serve", "--port", "70000"], "--port"),
    # ordinary mistakes
    (["eval", "--model", "{model}", "--corpus", "enwik"], "Did you mean 'enwiki_gensim'? Valid choices: "),
    (["eval", "--model", "{model}", "--split", "tst"], "Did you mean 'test'?"),
    (["eval", "--model", "{model}", "--seq-len", "1"], "--seq-len"),
    (["eval", "--model", "zoo:llama-s"], "is not trained"),
    (["runs", "list", "--store", "{garbage_db}"], "not a SQLite file"),
    (["runs", "list", "--store", "{empty_db}"], "is empty, not a run store"),
    (["runs", "show", "abcd", "--store", "{empty_db}"], "is empty, not a run store"),
    (["runs", "export", "--out", "{tmp}/x.csv", "--store", "{foreign_db}"], "not a qscale run store"),
    (["runs", "list", "--store", "{foreign_db}"], "not a qscale run store"),
    (["runs", "list", "--store", "{garbage_csv}"], "a run store is a SQLite file"),
    (["collect", "{spec}", "--store", "{garbage_db}", "--no-progress"], "not a SQLite file"),
    (["collect", "{spec}", "--store", "{foreign_db}", "--no-progress"], "not a qscale run store"),
    (["collect", "{spec}", "--store", "{empty_csv}", "--no-progress"], "a run store is a SQLite file"),
    (["collect", "{garbage_db}"], "invalid sweep spec"),
    (["fit", "--runs", "{garbage_db}", "--no-save"], "not a SQLite file"),
    (["fit", "--runs", "{empty_db}", "--no-save"], "is empty, not a run store"),
    (["fit", "--runs", "{foreign_db}", "--no-save"], "not a qscale run store"),
    (["fit", "--runs", "{garbage_csv}", "--no-save"], "not a run table"),
    (["fit", "--runs", "{empty_csv}", "--no-save"], "not a run table"),
    (["fit", "--runs", "{garbage_parquet}", "--no-save"], "not a run table"),
    (["fit", "--runs", "{empty_parquet}", "--no-save"], "not a run table"),
    (["fit", "--runs", "{garbage_db}", "--alpha", "2"], "--alpha"),
    (["report", "--runs", "{garbage_db}", "--no-public", "--out", "{tmp}/rep"], "not a SQLite file"),
    (["report", "--runs", "{empty_db}", "--no-public", "--out", "{tmp}/rep"], "is empty"),
    (["report", "--runs", "{garbage_parquet}", "--no-public", "--out", "{tmp}/rep"], "not a run table"),
    (["report", "--runs", "{empty_csv}", "--no-public", "--out", "{tmp}/rep"], "not a run table"),
    (["report", "--runs", "{garbage_csv}", "--no-public", "--out", "{tmp}/rep"], "not a run table"),
    (["landscape", "--model", "/nonexistent/model"], "not found"),
    (["landscape", "--model", "{model}", "--samples", "1"], "--samples"),
    (["quantize", "--model", "{model}", "-f", "int4-g16", "--out", "{garbage_csv}"], "is a file"),
    (["quantize", "--model", "{model}", "-f", "int4-g16", "--params", "{bad"], "--params"),
    (["predict", "--model", "{model}", "--formats", "int4-g128,foo4"], "foo4"),
    (["predict", "--model", "{model}", "-f", "int4-g128", "--params-b", "1"], "apply to a named law"),
    (["plan", "--model", "{model}", "--target-bpw", "-1"], "(0, 32]"),
    (["plan", "--model", "{model}", "--max-kld", "0"], "positive KL"),
    (["serve", "--models", "{empty}/nope"], "not a directory"),
]


def _files(tmp_path):
    """The garbage, empty and foreign files a new user hands qscale by mistake."""
    import sqlite3

    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "g.gguf").write_bytes(b"garbage, not a model\n")
    (tmp_path / "e.gguf").write_bytes(b"")
    (tmp_path / "g.sqlite").write_bytes(b"garbage, not a database\n" * 40)
    (tmp_path / "e.sqlite").write_bytes(b"")
    with sqlite3.connect(tmp_path / "accounts.sqlite") as con:
        con.execute("CREATE TABLE accounts (name TEXT, balance REAL)")
        con.execute("INSERT INTO accounts VALUES ('alice', 1.5)")
    (tmp_path / "g.csv").write_text("x,y\n1,2\n")
    (tmp_path / "e.csv").write_bytes(b"")
    (tmp_path / "g.parquet").write_bytes(b"PAR garbage, not parquet\n")
    (tmp_path / "e.parquet").write_bytes(b"")
    (tmp_path / "spec.yaml").write_text(
        "name: t\nmodels: [zoo:tiny-llama-s]\nformats: [int8-pc]\nmethods: [rtn]\n"
    )
    return {
        "{model}": None,
        "{empty}": empty,
        "{garbage_gguf}": tmp_path / "g.gguf",
        "{empty_gguf}": tmp_path / "e.gguf",
        "{garbage_db}": tmp_path / "g.sqlite",
        "{empty_db}": tmp_path / "e.sqlite",
        "{foreign_db}": tmp_path / "accounts.sqlite",
        "{garbage_csv}": tmp_path / "g.csv",
        "{empty_csv}": tmp_path / "e.csv",
        "{garbage_parquet}": tmp_path / "g.parquet",
        "{empty_parquet}": tmp_path / "e.parquet",
        "{spec}": tmp_path / "spec.yaml",
        "{tmp}": tmp_path,
    }


def _snapshot(tmp_path):
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    ("argv", "needle"), CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)]
)
def test_user_mistakes_are_one_line(argv, needle, model_dir, tmp_path, capsys, monkeypatch):
    if "cuda" in " ".join(argv):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    if "zoo:llama-s" in argv:  # a zoo name of the full preset, in a zoo that has not trained it
        monkeypatch.setenv("QSCALE_ZOO_DIR", str(tmp_path / "zoo"))
    subs = _files(tmp_path) | {"{model}": model_dir}
    before = _snapshot(tmp_path)
    for key, val in subs.items():
        argv = [a.replace(key, str(val)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    text = out.err + out.out
    assert exc.value.code == 2, text
    assert "Traceback" not in text
    assert needle in text, text
    assert len(text.strip().splitlines()) == 1 and text.startswith("error: "), text
    assert _snapshot(tmp_path) == before  # no data lost, no tables added to anyone's file
    assert not list(tmp_path.glob("*-wal"))


def test_help_still_works(capsys):
    for argv in (["--help"], ["eval", "--help"], ["runs", "--help"]):
        main(argv)  # returns: exit 0
        assert "Usage" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a group without a subcommand shows its help
        main(["runs"])
    assert "list" in capsys.readouterr().out


def test_no_help_example_names_a_missing_model(capsys):
    """Examples in --help name models a new user has (the tiny zoo), never zoo:llama-s (full preset)."""
    import re

    from qscale.lm.zoo import list_zoo

    tiny = {e.name for e in list_zoo(preset="tiny")}
    for cmd in (["quantize"], ["lens"], ["eval"], ["landscape"], ["outliers"], ["predict"], ["plan"]):
        main([*cmd, "--help"])
        text = capsys.readouterr().out
        for name in re.findall(r"zoo:([a-z0-9][a-z0-9.-]*)", text):
            assert name in tiny, (cmd, name)


def test_a_bug_keeps_its_traceback():
    class Bug(Exception):
        pass

    assert not user_error(Bug("x"))
    assert not user_error(ValueError("a plain ValueError is a bug"))
    from qscale.formats import FormatError
    from qscale.lm.loading import LoadError

    assert user_error(FormatError("x")) and user_error(LoadError("y"))


def test_fit_changes_the_shipped_laws_only_when_asked(capsys):
    """`qscale fit` needs --out to save, and never replaces a law without --force (issue 17: no silent damage)."""
    import hashlib

    from qscale.laws.artifacts import default_models_dir

    models_dir = default_models_dir()

    def digest() -> str:
        h = hashlib.sha256()
        for p in sorted(models_dir.rglob("*")):
            if p.is_file():
                h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    before = digest()
    base = ["fit", "--public", "--target", "kld", "--estimator", "bits-only", "--cv", "family"]
    for argv, needle in (
        (base, "give --out DIR"),
        ([*base, "--out", str(models_dir), "--name", "public-kld"], "already holds a law; pass --force"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        text = "".join(capsys.readouterr())
        assert exc.value.code == 2 and needle in text and "Traceback" not in text, text
    assert digest() == before
