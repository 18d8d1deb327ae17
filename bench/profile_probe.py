"""Does one measured perturbation fix the profile's per-model level? A noise probe against the measured panel.

The profile's raw prediction sits below the measured KL by a factor that differs per model (median raw / measured
0.67 SmolLM2, 0.51 Qwen-0.5B, 0.84 Qwen-1.5B; bench/profile.md). Whatever sets it (the row draw of the
2,048 calibration tokens, the diagonal Fisher's bias, the breakdown of second order), a cross-model constant cannot
know a new model's factor. This bench measures it per model: it perturbs every profiled weight by Gaussian noise of a known shape (each row's error
proportional to the row's RMS, ``dW = eps * rms_row(W) * z``), scaled so that the profile's raw prediction is
``--target`` nats/token, and measures the exact KL of the perturbed model against the float one on ``--rows`` x 512
tokens of the enwiki train split (rows drawn with ``--row-seed``; not the test split the panel is measured on).
The model's probe factor is measured / raw of that perturbation. The bench then scores, over the panel's RTN
formats with measured KL in [1e-3, 3], the raw prediction and the raw prediction times the probe factor against the
measured KL (geometric-mean ratio and median |ln|).

    python bench/profile_probe.py panel:smollm2-135m --rows 4,8 --target 0.05,0.2

Writes ``bench/results/profile_probe_<model>.json``.
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
    ap.add_argument("--rows", default="8", help="comma-separated probe row counts (512 tokens each)")
    ap.add_argument("--row-seed", type=int, default=1)
    ap.add_argument("--target", default="0.05", help="comma-separated raw KL sizes of the perturbation")
    ap.add_argument("--raw-cache", type=Path, default=REPO / "data" / "profile_raw.json")
    ap.add_argument("--store", type=Path, default=REPO / "data" / "runs_panel.sqlite")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from qscale.collect.store import RunStore
    from qscale.lm import load
    from qscale.measure.eval import reference_outputs
    from qscale.measure.probe import noise_probe, probe_windows
    from qscale.measure.sensitivity import cached_profile
    from qscale.paths import model_slug

    lm = load(a.model)
    prof, _, _ = cached_profile(lm)
    raw = json.loads(a.raw_cache.read_text())[lm.name]["raw"]
    with RunStore(a.store, readonly=True) as st:
        f = st.to_frame()
    f = f[
        (f["model"] == lm.name)
        & (f["status"] == "ok")
        & (f["method"] == "rtn")
        & (f["eval_corpus"] == "enwiki_gensim")
    ]
    meas = {k: v for k, v in zip(f["format"], f["kld"], strict=True) if 1e-3 <= v <= 3 and k in raw}

    def score(factor: float) -> dict:
        lr = [math.log(factor * raw[k] / meas[k]) for k in meas]
        return {
            "geomean_ratio": math.exp(statistics.fmean(lr)),
            "median_abs_ln": statistics.median(abs(x) for x in lr),
        }

    res: dict = {
        "model": lm.name,
        "n_formats": len(meas),
        "profile_settings": prof.settings,
        "raw_only": score(1.0),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "command": f"python bench/profile_probe.py {a.model} --rows {a.rows} --row-seed {a.row_seed} "
        f"--target {a.target}",
        "probes": [],
    }
    print(json.dumps({"model": lm.name, "raw_only": res["raw_only"], "n": len(meas)}), flush=True)
    for n_rows in (int(x) for x in a.rows.split(",")):
        t = time.perf_counter()
        win = probe_windows(lm.tokenizer, n_rows, seed=a.row_seed)
        ref = reference_outputs(lm.model, win, top_k=None, batch_size=4, progress=False)
        t_ref = time.perf_counter() - t
        for target in (float(x) for x in a.target.split(",")):
            pr = noise_probe(lm, prof, win, target=target, reference=ref)
            pr["reference_seconds"] = round(t_ref, 2)
            row = {"rows": n_rows, "target": target, **pr, **score(pr["factor"])}
            row["seconds_total"] = round(time.perf_counter() - t, 1)
            res["probes"].append(row)
            print(json.dumps(row), flush=True)
    out = a.out or REPO / "bench" / "results" / f"profile_probe_{model_slug(lm.name)}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
