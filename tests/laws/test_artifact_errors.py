"""Issue 15, low: artifact errors in the CLI are one line (exit 2), and a failed write loses no law.

Disk full is simulated by a monkeypatched ``Path.write_text`` raising ENOSPC for the manifest (the last file
of an artifact). The old ``save_law`` wrote into the law's own directory: the new ``params.json`` replaced the
shipped one, the old manifest's hash no longer matched, and the CLI printed the OSError's traceback.
"""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
from typer.testing import CliRunner

from qscale.cli import app, main
from qscale.laws.artifacts import list_laws, load_law, verify_law
from qscale.laws.estimators import LawError
from qscale.laws.fitting import fit_law, load_fit_data

runner = CliRunner()


@pytest.fixture()
def laws_dir(tmp_path):
    d = tmp_path / "models"
    fit_law(load_fit_data(public=True), "size-bits", "pub", "table", models_dir=d)
    return d


@pytest.fixture()
def disk_full(monkeypatch):
    real = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def _snapshot(d: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_disk_full_while_saving_keeps_the_old_law(laws_dir, disk_full):
    before = _snapshot(laws_dir / "pub")
    data = load_fit_data(public=True)
    with pytest.raises(LawError, match=r"cannot write law 'pub' to .*No space left on device.*unchanged"):
        fit_law(data, "forest", "pub", "table", models_dir=laws_dir)  # a different law under the same name
    assert _snapshot(laws_dir / "pub") == before  # old code: params.json replaced, the artifact corrupt
    assert verify_law("pub", laws_dir) == "verified" and load_law("pub", laws_dir).preset == "size-bits"
    assert sorted(p.name for p in laws_dir.iterdir()) == ["pub"]  # no half-written directory left behind


def test_fit_on_a_full_disk_is_one_line(laws_dir, disk_full):
    res = runner.invoke(
        app,
        [
            "fit",
            "--public",
            "--estimator",
            "size-bits",
            "--cv",
            "table",
            "--name",
            "new",
            "--models-dir",
            str(laws_dir),
        ],
    )
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)  # old code: the OSError itself
    err = res.stderr.strip().splitlines()
    assert err == [
        f"error: cannot write law 'new' to {laws_dir / 'new'}: No space left on device; any law already there is unchanged"
    ]
    assert list_laws(laws_dir) == ["pub"]


def test_save_replaces_a_law_atomically(laws_dir):
    fit_law(load_fit_data(public=True), "forest", "pub", "table", models_dir=laws_dir)
    assert load_law("pub", laws_dir).preset == "forest" and verify_law("pub", laws_dir) == "verified"
    assert sorted(p.name for p in laws_dir.iterdir()) == ["pub"]


def test_laws_list_on_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main(["laws", "list", "--models-dir", str(f)])  # old code: NotADirectoryError traceback
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: laws directory {f}: Not a directory")


def test_hidden_directories_are_not_laws(laws_dir):
    (laws_dir / ".pub.tmp-1-abc").mkdir()
    (laws_dir / ".pub.tmp-1-abc" / "manifest.json").write_text(json.dumps({}))
    assert list_laws(laws_dir) == ["pub"]
