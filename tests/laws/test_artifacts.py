"""Artifacts round-trip bit-identically; loading refuses untrusted content."""

import json
import zipfile

import numpy as np
import pytest

from qscale.laws.artifacts import Law, data_hash, list_laws, load_law, save_law
from qscale.laws.estimators import LawError
from qscale.laws.registry import make_estimator
from tests.laws.conftest import ouyang_frame


def _zoo_df():
    df = ouyang_frame()
    rng = np.random.default_rng(0)
    return df.assign(
        sqnr_db=6.02 * df.bits_per_element + rng.normal(0, 1, len(df)), element_bits=df.bits_per_element
    )


def _fit(preset, df):
    est = make_estimator(preset, "zoo", df)
    if hasattr(est, "n_estimators"):
        est.set_params(n_estimators=20)
    return est.fit(df, groups=df["family"])


@pytest.mark.parametrize("preset", ["bits-only", "ouyang", "kumar", "ols", "forest", "boosting", "gp"])
def test_round_trip_identical(preset, tmp_path):
    df = _zoo_df()
    est = _fit(preset, df)
    law = Law(
        name=f"t-{preset}", estimator=est, kind="zoo", preset=preset, data_hash=data_hash(df), n_rows=len(df)
    )
    d = save_law(law, tmp_path / law.name)
    files = sorted(p.name for p in d.iterdir())
    assert files == (
        ["manifest.json", "model.skops", "params.json"]
        if est.storage == "skops"
        else ["manifest.json", "params.json"]
    )
    back = load_law(law.name, models_dir=tmp_path)
    for alpha in (0.1, 0.32):
        a = est.predict_interval(df, alpha=alpha).to_numpy()
        b = back.estimator.predict_interval(df, alpha=alpha).to_numpy()
        assert np.array_equal(a, b), preset
    m = json.loads((d / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["training"]["rows"] == len(df) and len(m["training"]["hash"]) == 64
    assert {f["name"] for f in m["features"]} == set(est.features_)
    assert all("unit" in f for f in m["features"]) and m["target"]["unit"] == "nats/token"
    assert "qscale_version" in m and "created" in m
    assert list_laws(tmp_path) == [law.name]


def _saved_forest(tmp_path):
    df = _zoo_df()
    est = _fit("forest", df)
    return save_law(Law(name="f", estimator=est, kind="zoo", preset="forest"), tmp_path / "f")


def test_tampered_skops_with_untrusted_type_is_refused(tmp_path):
    d = _saved_forest(tmp_path)
    src = d / "model.skops"
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    schema = entries["schema.json"].decode()
    assert '"__module__": "sklearn.tree._tree"' in schema
    entries["schema.json"] = (
        schema.replace('"__module__": "sklearn.tree._tree"', '"__module__": "os"')
        .replace('"__class__": "Tree"', '"__class__": "system"')
        .encode()
    )
    with zipfile.ZipFile(src, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    # the manifest's sha256 catches the edit first ...
    with pytest.raises(LawError, match="model.skops does not match its sha256"):
        load_law(d)
    # ... and an attacker who also rewrites the hash still meets the trusted-types check
    import hashlib

    m = json.loads((d / "manifest.json").read_text())
    m["files"]["model.skops"] = hashlib.sha256(src.read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LawError, match=r"untrusted types \['os.system'\]"):
        load_law(d)


def test_manifest_cannot_name_arbitrary_classes_or_params(tmp_path):
    d = _saved_forest(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**m, "estimator": "os.system"}))
    with pytest.raises(LawError, match="unknown estimator 'os.system'"):
        load_law(d)
    (d / "manifest.json").write_text(json.dumps({**m, "params": {**m["params"], "evil": 1}}))
    with pytest.raises(LawError, match=r"parameters \['evil'\]"):
        load_law(d)


def test_unknown_law_name_did_you_mean(tmp_path):
    _saved_forest(tmp_path)
    with pytest.raises(LawError, match=r"unknown law 'ff'. Did you mean 'f'\?"):
        load_law("ff", models_dir=tmp_path)
