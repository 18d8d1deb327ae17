"""Issue 12's per-layer breakdown, measured: does the profile say *where* the damage is?

The profile predicts each layer's KL contribution (``format_terms``: its RTN weight error weighted by the Fisher
diagonal); the breakdown the CLI prints is those terms. This bench quantizes one subset of layers at a time (the
rest stays float), measures exact KL on the real panel's evaluation record (``data/sweeps/panel_rtn.yaml``'s
first eval: enwiki test, 512-token windows, first 8,704 tokens), and compares it with the subset's predicted sum:

- subsets by layer kind (every ``q_proj``, every ``down_proj``, ...) and by depth (``--depth-groups`` contiguous
  groups of blocks), plus the whole model;
- per subset: raw (uncalibrated) prediction, the shipped calibration's value and 90% interval, measured KL;
- Spearman of raw vs measured across the subsets of each partition; measured / raw per subset (a constant ratio
  means the per-layer terms are right up to the one scale the calibration fits);
- additivity: the sum of a partition's measured KL against the whole model's.

    python bench/profile_layers.py panel:smollm2-135m --format int4-g128

Writes ``bench/results/profile_layers_<model>_<format>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _block(name: str) -> int | None:
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def partitions(names: list[str], depth_groups: int) -> dict[str, dict[str, list[str]]]:
    """``{"kind": {kind: [names]}, "depth": {"blocks a-b": [names]}}`` over the profiled layers."""
    kinds: dict[str, list[str]] = {}
    for n in names:
        kinds.setdefault(n.rsplit(".", 1)[-1], []).append(n)
    blocks = sorted({b for n in names if (b := _block(n)) is not None})
    depth: dict[str, list[str]] = {}
    if blocks:
        per = math.ceil(len(blocks) / depth_groups)
        for i in range(0, len(blocks), per):
            grp = set(blocks[i : i + per])
            depth[f"blocks {min(grp)}-{max(grp)}"] = [n for n in names if _block(n) in grp]
    return {"kind": kinds, "depth": depth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--format", default="int4-g128")
    ap.add_argument("--depth-groups", type=int, default=6)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from scipy.stats import spearmanr

    from qscale.collect.spec import load_spec
    from qscale.corpora import get_windows
    from qscale.formats import get_format
    from qscale.lm import load
    from qscale.measure import evaluate_windows, reference_outputs
    from qscale.measure.sensitivity import cached_profile
    from qscale.paths import model_slug
    from qscale.quantize import quantized
    from qscale.workflows.profile import format_terms, load_calibration

    fmt = str(get_format(a.format))
    ev = dataclasses.asdict(load_spec(REPO / "data" / "sweeps" / "panel_rtn.yaml").evals[0])
    batch_size = ev.pop("batch_size")
    lm = load(a.model, attn_implementation="sdpa")
    prof, _, _ = cached_profile(lm)
    layers = format_terms(lm, prof, [fmt])[0]["layers"]
    names = list(layers)
    cal = load_calibration("kld")
    w = get_windows(lm.tokenizer, **ev)
    t = time.perf_counter()
    ref = reference_outputs(lm.model, w, batch_size=batch_size, progress=False)
    res: dict = {
        "model": lm.name,
        "identity": lm.facts.identity,
        "format": fmt,
        "eval": {**ev, "n_tokens": int(w.n_scored)},
        "float_s": round(time.perf_counter() - t, 1),
        "calibration": {"form": cal.form, "fitted_on": getattr(cal, "models_", None)},
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "command": f"python bench/profile_layers.py {a.model} --format {fmt} --depth-groups {a.depth_groups}",
    }

    def measure(sub: list[str]) -> dict:
        raw = sum(layers[n]["kld"] for n in sub)
        v, lo, hi = (float(x[0]) for x in cal.interval([raw]))
        t = time.perf_counter()
        with torch.inference_mode(), quantized(lm.model, fmt, method="rtn", include=sub):
            r = evaluate_windows(lm.model, w, reference=ref, batch_size=batch_size, progress=False)
        row = {"layers": len(sub), "raw": raw, "predicted": v, "lo": lo, "hi": hi, "measured": r["kld"]}
        row["seconds"] = round(time.perf_counter() - t, 1)
        print(json.dumps(row), flush=True)
        return row

    res["whole"] = measure(names)
    res["partitions"] = {}
    for part, groups in partitions(names, a.depth_groups).items():
        rows = {g: measure(sub) for g, sub in groups.items()}
        raw = [r["raw"] for r in rows.values()]
        meas = [r["measured"] for r in rows.values()]
        ratio = [m / r for m, r in zip(meas, raw, strict=True) if r > 0 and m > 0]
        res["partitions"][part] = {
            "groups": rows,
            "spearman": float(spearmanr(raw, meas).statistic) if len(rows) >= 3 else float("nan"),
            "meas_over_raw_min": min(ratio),
            "meas_over_raw_max": max(ratio),
            "covered": sum(r["lo"] <= r["measured"] <= r["hi"] for r in rows.values()),
            "sum_measured_over_whole": sum(meas) / res["whole"]["measured"],
            "top_predicted": max(rows, key=lambda g: rows[g]["raw"]),
            "top_measured": max(rows, key=lambda g: rows[g]["measured"]),
        }
        print(
            part, json.dumps({k: v for k, v in res["partitions"][part].items() if k != "groups"}), flush=True
        )
    slug = model_slug(lm.name)
    out = a.out or REPO / "bench" / "results" / f"profile_layers_{slug}_{fmt}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
