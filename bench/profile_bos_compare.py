"""BOS forced vs the model's own convention on the real panel: the KL per format, and the profile law's held-out error.

    python bench/profile_bos_compare.py [NATIVE_RUNS_CSV]

Reads the two panel stores (data/runs_panel.sqlite: BOS forced; data/runs_panel_native.sqlite: no BOS) for the
KL table, and two per-run validation tables with raw profile predictions and probe factors for the law:
bench/results/profile_validation_runs_bos.csv (the validation of 2026-12-03, BOS profiles against BOS runs) and
NATIVE_RUNS_CSV (default reports/profile_validation_runs.csv: native profiles against native runs). The law is
the shipped form (ln meas = a + ln(raw x probe factor), a the mean residual of the other models), scored on the
14 formats both stores share, runs with KL in [1e-3, 3], each model held out in turn.
"""

import sys

import numpy as np
import pandas as pd

from qscale.collect.store import RunStore

FORMATS = [
    "int8-pc",
    "int6-pc",
    "int4-g128",
    "int3-g128",
    "nf4-g64",
    "mxfp4-e2m1-b32",
    "int5-pc",
    "fp6-e2m3-pc",
    "int4-g64",
    "mxint4-b32",
    "fp8-e4m3-pc",
    "int5-g32",
    "nf3-g64",
    "cbrt4-g128",
]


def kl(path: str) -> dict:
    with RunStore(path, readonly=True) as st:
        return {
            (r["model_ref"], r["format"]): r["metrics"]["kld"]
            for r in st.rows("ok")
            if r["method"] == "rtn" and r["config"]["eval"]["corpus"] == "enwiki_gensim"
        }


bos, nat = kl("data/runs_panel.sqlite"), kl("data/runs_panel_native.sqlite")
for m in sorted({k[0] for k in nat}):
    fs = sorted((f for (mm, f) in nat if mm == m and (mm, f) in bos), key=lambda f: nat[(m, f)])
    r = [nat[(m, f)] / bos[(m, f)] for f in fs]
    print(f"\n{m}: {len(fs)} formats, no-BOS / BOS {min(r):.2f}-{max(r):.2f} (median {np.median(r):.2f})\n")
    print("| format | KL, BOS forced | KL, no BOS | no BOS / BOS |\n|---|---|---|---|")
    for f, x in zip(fs, r, strict=True):
        print(f"| {f} | {bos[(m, f)]:.4g} | {nat[(m, f)]:.4g} | {x:.2f} |")


def lomo(df: pd.DataFrame, label: str) -> None:
    df = df[df.format.isin(FORMATS) & (df.kld >= 1e-3) & (df.kld <= 3) & df.model.str.startswith("panel:")]
    df = df.assign(x=np.log(df.raw * df.probe_factor), y=np.log(df.kld))
    models = sorted(df.model.unique())
    for m in models:
        train, test = df[df.model != m], df[df.model == m]
        a = float((train.y - train.x).mean())
        err = np.abs(test.x + a - test.y)
        print(
            f"{label:7s} {m:28s} (fit on {len(models) - 1} others) runs {len(test):2d}  median |ln| {np.median(err):.3f}"
        )


print()
lomo(pd.read_csv("bench/results/profile_validation_runs_bos.csv"), "BOS")
lomo(pd.read_csv(sys.argv[1] if len(sys.argv) > 1 else "reports/profile_validation_runs.csv"), "no BOS")
