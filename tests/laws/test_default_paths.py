"""The laws' and the public report's default paths (models/, data/public/, reports/) go through qscale.paths: from
a checkout, from $QSCALE_ROOT, and in an installed wheel a one-line PathError naming what to give instead."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qscale
from qscale import paths
from qscale.cli import main, user_error
from qscale.laws import artifacts, public
from qscale.report import public as report_public

CHECKOUT = Path(qscale.__file__).resolve().parents[1]


@pytest.fixture
def wheel(monkeypatch):
    """An installed package: no source checkout, no $QSCALE_ROOT."""
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setattr(paths, "checkout_root", lambda: None)


def _one_line(err: BaseException, *needles: str) -> None:
    msg = str(err)
    assert isinstance(err, paths.PathError) and user_error(err) and "\n" not in msg, msg
    assert "$QSCALE_ROOT" in msg and all(n in msg for n in needles), msg


def test_models_dir_in_a_wheel_names_the_option(wheel, tmp_path):
    with pytest.raises(paths.PathError) as err:
        artifacts.default_models_dir()
    _one_line(err.value, "no default models", "--models-dir")
    for call in (artifacts.list_laws, lambda: artifacts.load_law("public-kld")):
        with pytest.raises(paths.PathError, match="--models-dir"):
            call()
    # an explicit directory (or a law's own path) needs no default
    shutil.copytree(CHECKOUT / "models" / "public-kld", tmp_path / "public-kld")
    assert artifacts.list_laws(tmp_path) == ["public-kld"]
    assert artifacts.load_law("public-kld", models_dir=tmp_path).name == "public-kld"
    assert artifacts.load_law(tmp_path / "public-kld").name == "public-kld"


def test_public_defaults_in_a_wheel_name_what_to_give(wheel, monkeypatch):
    with pytest.raises(paths.PathError) as err:
        public.DEFAULT_PUBLIC_CSV  # noqa: B018 - the module attribute, resolved when asked for
    _one_line(err.value, "data/public/results.csv", "a path to results.csv")
    with pytest.raises(paths.PathError, match="data/public/results.csv"):
        public.load_public()
    from qscale.laws.fitting import load_fit_data

    with pytest.raises(paths.PathError, match="data/public/results.csv"):
        load_fit_data(public=True)
    with pytest.raises(paths.PathError) as err:
        report_public.DEFAULT_CV_CACHE  # noqa: B018
    _one_line(err.value, "reports/public_cv.csv", "--cv-cache")
    # what worked without the files still does: no panel rows, a format's capacity measured instead of looked up
    assert public.panel_rows().empty
    import qscale.measure.capacity as cap

    monkeypatch.setattr(cap, "capacity", lambda spec, dist: (None, 3.0))
    assert public.format_capacity("int4-g128") == {"eff_bits_gauss": 3.0, "eff_bits_t5": 3.0}
    committed = CHECKOUT / "data" / "public" / "format_capacity.csv"
    assert public.format_capacity("int4-g128", committed)["eff_bits_gauss"] == pytest.approx(3.09, abs=0.01)


def test_cli_in_a_wheel_is_one_line(wheel, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["laws", "list"])
    text = capsys.readouterr().err
    assert exc.value.code == 2 and text.startswith("error: no default models") and "--models-dir" in text
    assert len(text.strip().splitlines()) == 1
    assert report_public.main(["--targets", "kld"]) == 2
    text = capsys.readouterr().err
    assert text.startswith("error: no default reports/public_laws.md") and "--out" in text


def test_defaults_follow_qscale_root(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert artifacts.default_models_dir() == tmp_path / "models"
    assert artifacts.list_laws() == []  # no models/ there: no laws
    with pytest.raises(artifacts.LawError, match="holds no laws"):
        artifacts.load_law("public-kld")
    shutil.copytree(CHECKOUT / "models" / "public-kld", tmp_path / "models" / "public-kld")
    assert artifacts.list_laws() == ["public-kld"]
    assert artifacts.load_law("public-kld").path.parent == tmp_path / "models"
    csv = public.DEFAULT_PUBLIC_CSV  # the module attribute, resolved when asked for
    assert csv == tmp_path / "data" / "public" / "results.csv"
    assert public.default_path("DEFAULT_PANEL_STORE") == tmp_path / "data" / "runs_panel.sqlite"
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        public.load_public()
    cache = report_public.DEFAULT_CV_CACHE
    assert cache == tmp_path / "reports" / "public_cv.csv"


def test_the_checkout_defaults_are_the_committed_files(monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    assert artifacts.default_models_dir() == CHECKOUT / "models"
    assert public.DEFAULT_CAPACITY_CSV == CHECKOUT / "data" / "public" / "format_capacity.csv"
    assert public.DEFAULT_PUBLIC_CSV.is_file() and report_public.DEFAULT_CV_CACHE.is_file()


def test_importing_resolves_no_default():
    """Importing the modules that hold defaults never resolves one (it would fail in an installed wheel)."""
    code = (
        "import os; os.environ.pop('QSCALE_ROOT', None)\n"
        "import qscale.paths as p; p.checkout_root = lambda: None\n"
        "import qscale.laws.artifacts, qscale.laws.public, qscale.laws.fitting, qscale.report.public\n"
        "import qscale.report.build, qscale.workflows.profile, qscale.laws.commands, qscale.report.commands\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
