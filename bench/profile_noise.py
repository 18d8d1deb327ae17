"""Where the profile's level noise comes from: the calibration rows drawn, or the labels sampled from the model.

The raw prediction 1/(2N) sum F_ij dW_ij^2 moves by 1.2-2.6x with the calibration seed (bench/profile.md,
"Calibration rows"). That seed draws both the rows (``calibration_batch``) and, in the shipped profile, the
labels are drawn with seed 0. This bench separates the two on one model: profiles on the same rows with other
label seeds, and profiles on other rows with the labels averaged over several draws (``label_draws``), each scored
on the same RTN formats and divided by the measured exact KL of ``data/runs_panel.sqlite``.

    python bench/profile_noise.py panel:qwen2.5-coder-0.5b --formats int8-pc,int6-pc,nf4-g64,int4-g128,mxfp4 \
        --variants 0/1/1,0/2/1,0/0/4,1/0/4,2/0/4

A variant is ``ROWSEED/LABELSEED/DRAWS[/full]`` (rows of the default calibration: 2,048 tokens; ``/full``
keeps the whole Fisher diagonal instead of its rank-1 factorisation). The shipped profile
(rows 0, labels 0, 1 draw) is always scored first. Writes ``bench/results/profile_noise_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--formats", default="int8-pc,int6-pc,nf4-g64,int4-g128,mxfp4")
    ap.add_argument("--variants", default="0/1/1,0/2/1,0/0/4,1/0/4,2/0/4")
    ap.add_argument("--store", type=Path, default=REPO / "data" / "runs_panel.sqlite")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from qscale.collect.store import RunStore
    from qscale.corpora import calibration_batch
    from qscale.formats import get_format
    from qscale.lm import load
    from qscale.measure.sensitivity import cached_profile, compute_profile, default_calibration
    from qscale.paths import model_slug
    from qscale.workflows.profile import format_terms

    specs = [str(get_format(s)) for s in a.formats.split(",") if s]
    lm = load(a.model)
    with RunStore(a.store, readonly=True) as st:
        f = st.to_frame()
    f = f[(f["model"] == lm.name) & (f["status"] == "ok") & (f["method"] == "rtn")]
    meas = dict(zip(f["format"], f["kld"], strict=True))
    missing = [s for s in specs if s not in meas]
    if missing:
        raise SystemExit(f"no measured RTN KL for {missing} of {lm.name} in {a.store}")
    base = default_calibration(lm)
    slug = model_slug(lm.name)
    out = a.out or REPO / "bench" / "results" / f"profile_noise_{slug}.json"
    res: dict = {
        "model": lm.name,
        "formats": specs,
        "measured_kld": {s: meas[s] for s in specs},
        "calibration": base,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "command": f"python bench/profile_noise.py {a.model} --formats {a.formats} --variants {a.variants}",
        "variants": {},
    }

    def score(name: str, prof, seconds: float | None) -> None:
        terms = format_terms(lm, prof, specs)
        ratio = {t["format"]: t["raw"] / meas[t["format"]] for t in terms}
        row = {
            "seconds": None if seconds is None else round(seconds, 1),
            "ratio": ratio,
            "geomean_ratio": math.exp(statistics.fmean(math.log(r) for r in ratio.values())),
        }
        res["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    shipped, _, _ = cached_profile(lm)
    score("0/0/1 (shipped)", shipped, shipped.seconds)
    for v in filter(None, a.variants.split(",")):
        parts = v.split("/")
        row_seed, label_seed, draws = (int(x) for x in parts[:3])
        estimator = parts[3] if len(parts) > 3 else "rank1"
        cal = {**base, "seed": row_seed}
        calib = calibration_batch(lm.tokenizer, cal["corpus"], cal["n_samples"], cal["seq_len"], cal["seed"])
        t = time.perf_counter()
        prof = compute_profile(
            lm, calib, estimator=estimator, label_draws=draws, seed=label_seed, settings={"calibration": cal}
        )
        score(v, prof, time.perf_counter() - t)
    g = {k: r["geomean_ratio"] for k, r in res["variants"].items()}
    res["summary"] = {
        "geomean_ratio": g,
        "spread_max_over_min": max(g.values()) / min(g.values()),
    }
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
