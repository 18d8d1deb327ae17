"""The zoo path through a real run store: RunStore rows -> zoo_table -> fit -> CV (no torch needed)."""

import math

import numpy as np
import pytest

from qscale.laws.cv import cross_validate
from qscale.laws.estimators import LawError
from qscale.laws.features import zoo_table
from qscale.laws.fitting import load_fit_data
from qscale.laws.registry import make_estimator


def _fill(path, n_fam=3):
    from qscale.collect.store import RunStore

    rng = np.random.default_rng(0)
    fmts = {
        "int8-pc": (8.0, 8, "int", 40.0),
        "int4-g16": (5.0, 4, "int", 22.0),
        "int3-g16": (4.0, 3, "int", 15.0),
    }
    with RunStore(path) as st:
        for f in range(n_fam):
            for i, n in enumerate((1e5, 4e5, 1.6e6)):
                model = f"fam{f}-{i}"
                for spec, (bpe, eb, ff, s0) in fmts.items():
                    s = s0 + rng.normal()
                    d = 10 * n**-0.2 * 10 ** (-s / 10) * math.exp(0.05 * rng.normal())
                    st.put(
                        {
                            "run_key": f"{model}|{spec}",
                            "status": "ok",
                            "model": model,
                            "model_ref": model,
                            "format": spec,
                            "method": "rtn",
                            "config": {},
                            "facts": {
                                "family": f"fam{f}",
                                "n_params": 2 * n,
                                "n_nonembed": n,
                                "train_tokens": 20 * n,
                            },
                            "format_info": {"bits_per_element": bpe, "element_bits": eb, "family": ff},
                            "metrics": {"float_nll": 4.0, "nll": 4.0 + d, "dnll": d},
                            "features": {"sqnr_db": s, "weight_stats_kurtosis_max": 3.0 + f},
                        }
                    )
        st.put({"run_key": "bad", "status": "error", "model": "x", "model_ref": "x", "format": "int4-g16",
                "method": "rtn", "config": {}})  # fmt: skip
    return path


def test_store_to_law(tmp_path):
    pytest.importorskip("qscale.collect.store")
    path = _fill(tmp_path / "runs.sqlite")
    data = load_fit_data(runs=path)
    z = data.frame
    assert data.kind == "zoo" and len(z) == 27  # the error row is dropped
    assert set(z["size"]) == {1, 2, 3} and (z.groupby("family")["size"].nunique() == 3).all()
    assert "weight_stats_kurtosis_max" in z.columns and "nll" not in z.columns
    est = make_estimator("second-order", "zoo", z)
    assert est.features == ("sqnr_db", "n_nonembed")
    s = est.fit(z).summary().set_index("param")["estimate"]
    assert s["d"] == pytest.approx(1.0, abs=0.05) and s["b"] == pytest.approx(0.2, abs=0.05)
    res = cross_validate(make_estimator("second-order", "zoo", z), z, "size")
    assert res.largest["n"] == 9 and res.scores["spearman"] > 0.9
    flex = make_estimator("forest", "zoo", z)
    assert "weight_stats_kurtosis_max" in flex.features and "float_nll" in flex.features


def test_zoo_table_names_missing_columns():
    import pandas as pd

    with pytest.raises(LawError, match=r"not a run table: it lacks columns \['dnll'"):
        zoo_table(pd.DataFrame({"model": ["a"], "family": ["f"], "format": ["int4"]}))
    with pytest.raises(LawError, match="run store not found"):
        load_fit_data(runs="/nonexistent/runs.sqlite")
