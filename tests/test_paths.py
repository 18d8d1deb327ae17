"""Default paths into the repository work from a checkout, from $QSCALE_ROOT, and fail in one line elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

import qscale
from qscale import paths
from qscale.cli import main, user_error

CHECKOUT = Path(qscale.__file__).resolve().parents[1]


def test_checkout_root_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert paths.checkout_root() == CHECKOUT  # the tests run from the source checkout
    assert paths.repo_path("data/runs.sqlite") == CHECKOUT / "data" / "runs.sqlite"
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.repo_path("models", option="--models-dir") == tmp_path / "models"


def test_installed_package_names_the_option(monkeypatch):
    """An installed wheel has no checkout: a default is a one-line user error naming the path and the option."""
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    with pytest.raises(paths.PathError) as err:
        paths.repo_path("data/runs.sqlite", option="--store")
    msg = str(err.value)
    assert "data/runs.sqlite" in msg and "--store" in msg and "$QSCALE_ROOT" in msg and "\n" not in msg
    assert user_error(err.value)


def test_defaults_resolve_through_the_helper(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    from qscale.collect.store import default_store
    from qscale.corpora.text import data_dir
    from qscale.report import build

    assert default_store() == tmp_path / "data" / "runs.sqlite"
    assert data_dir() == tmp_path / "data" / "corpora"
    runs = build.DEFAULT_RUNS  # the module attribute, resolved when asked for
    assert runs == tmp_path / "data" / "runs.sqlite"
    assert build.default_input("DEFAULT_PANEL") == tmp_path / "data" / "runs_panel_native.sqlite"


def test_cli_default_store_from_an_installed_package(monkeypatch, capsys):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    with pytest.raises(SystemExit) as exc:
        main(["runs", "list"])
    text = capsys.readouterr().err
    assert exc.value.code == 2 and text.startswith("error: no default data/runs.sqlite") and "--store" in text
    assert len(text.strip().splitlines()) == 1
