"""Issue 15 item 9: artifacts carry sha256 hashes of their files; a corrupt one is refused by name, the
others stay usable; an artifact from before the hashes is loadable but reported as unverified."""

from __future__ import annotations

import json
import shutil

import pytest

from qscale.laws.artifacts import check_laws, load_law, verify_law
from qscale.laws.estimators import LawError
from qscale.laws.fitting import fit_law, load_fit_data


@pytest.fixture(scope="module")
def laws_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    data = load_fit_data(public=True)
    fit_law(data, "size-bits", "good", "table", models_dir=d)
    fit_law(data, "forest", "tree", "table", models_dir=d)
    return d


def _copy(laws_dir, tmp_path, *names):
    for n in names:
        shutil.copytree(laws_dir / n, tmp_path / n)
    return tmp_path


def test_saved_artifact_hashes_its_files(laws_dir):
    for name, files in (("good", {"params.json"}), ("tree", {"params.json", "model.skops"})):
        manifest = json.loads((laws_dir / name / "manifest.json").read_text())
        assert set(manifest["files"]) == files
        assert verify_law(name, laws_dir) == "verified"


@pytest.mark.parametrize("victim", ["params.json", "model.skops"])
def test_corrupt_file_is_refused_by_name_and_others_still_load(laws_dir, tmp_path, victim):
    d = _copy(laws_dir, tmp_path, "good", "tree")
    path = d / "tree" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LawError, match=f"tree: {victim} does not match its sha256"):
        load_law("tree", d)
    good, bad = check_laws(d)
    assert good == ["good"]
    assert [n for n, _ in bad] == ["tree"] and victim in bad[0][1]


def test_artifact_without_hashes_is_unverified_but_loads(laws_dir, tmp_path):
    d = _copy(laws_dir, tmp_path, "good")
    mpath = d / "good" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    del manifest["files"]
    mpath.write_text(json.dumps(manifest))
    assert verify_law("good", d) == "unverified"
    assert load_law("good", d).name == "good"
    # ... but a garbled file of such an artifact is still a named LawError, not a raw JSONDecodeError
    (d / "good" / "params.json").write_text('{"truncated": ')
    with pytest.raises(LawError, match="good: corrupt artifact"):
        load_law("good", d)


def test_unreadable_manifest_is_a_law_error(laws_dir, tmp_path):
    d = _copy(laws_dir, tmp_path, "good")
    (d / "good" / "manifest.json").write_text("{not json")
    with pytest.raises(LawError, match="manifest.json is unreadable"):
        load_law("good", d)
    assert check_laws(d)[0] == []
