"""The profile's estimator on a real model: diagonal vs input-correlated terms, RTN vs GPTQ weights, and how the
calibration's row length and seed move the raw prediction (bench/profile.md, "Input correlations" and
"Calibration rows").

    python bench/profile_kron.py panel:smollm2-135m --rtn int8-pc,int4-g128,nf4-g64 --gptq int4-g128
    python bench/profile_kron.py panel:qwen2.5-coder-0.5b --rtn int8-pc,int4-g128 --calibration 4x512/0,8x256/1

Writes ``bench/results/profile_kron_<model>.json``: per format the raw diagonal prediction (``raw``), the one
with input correlations (``raw_corr``), the seconds; per calibration variant the raw diagonal predictions.
Compare with the measured KL of the same formats in data/runs_panel.sqlite (`qscale runs`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qscale.lm import load
from qscale.measure.sensitivity import cached_profile
from qscale.workflows.profile import format_terms, method_terms, profile_correlations

GPTQ = {"percdamp": 0.01, "blocksize": 128}  # data/sweeps/panel_gptq_smollm2.yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--rtn", default="", help="comma list of formats scored with RTN weights")
    ap.add_argument("--gptq", default="", help="comma list of formats scored with GPTQ weights (runs GPTQ)")
    ap.add_argument("--calibration", default="", help="extra profile calibrations: ROWSxLEN/SEED,...")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(__file__).parent / "results" / f"profile_kron_{a.model.replace(':', '_')}.json"
    res = json.loads(out.read_text()) if out.is_file() else {}
    lm = load(a.model)
    t = time.perf_counter()
    prof, _, computed = cached_profile(lm)
    res["profile"] = {"seconds": prof.seconds if computed else None, "settings": prof.settings}
    t = time.perf_counter()
    corr, info = profile_correlations(lm, prof)
    res["correlations"] = {**info, "wall_s": round(time.perf_counter() - t, 1)}
    for method, specs, params in (("rtn", a.rtn, None), ("gptq", a.gptq, GPTQ)):
        for spec in filter(None, specs.split(",")):
            (it,) = method_terms(lm, prof, [spec], method=method, params=params, correlations=corr)
            res.setdefault(method, {})[it["format"]] = {
                k: it[k] for k in ("raw", "raw_corr", "quantize_s", "seconds", "bits_per_weight")
            }
            print(method, it["format"], f"raw {it['raw']:.4g}", f"raw_corr {it['raw_corr']:.4g}", flush=True)
            out.write_text(json.dumps(res, indent=1, sort_keys=True))
    for variant in filter(None, a.calibration.split(",")):
        shape, seed = variant.split("/")
        rows, length = (int(x) for x in shape.split("x"))
        cal = {"corpus": "enwiki_gensim", "n_samples": rows, "seq_len": length, "seed": int(seed)}
        p, _, _ = cached_profile(lm, calibration=cal)
        specs = [s for s in a.rtn.split(",") if s]
        res.setdefault("calibration", {})[variant] = {
            it["format"]: it["raw"] for it in format_terms(lm, p, specs)
        }
        print(variant, res["calibration"][variant], flush=True)
        out.write_text(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
