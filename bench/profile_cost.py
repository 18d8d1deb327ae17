"""Issue 12's cost target, side by side in one run: a fresh sensitivity profile plus one prediction per format,
against RTN quantization plus exact-KL evaluation of the same formats (bench/profile.md, "Cost target").

    python bench/profile_cost.py panel:smollm2-135m --formats 30
    python bench/profile_cost.py panel:qwen2.5-coder-0.5b --formats 10

Both sides run in this process, on the same model load, one after the other:
- prediction side: ``cached_profile`` on the default calibration (into a temporary cache, so it is computed,
  not read: the Fisher pass and the noise probe, ``fisher_s`` and ``probe.seconds`` of the JSON) and ``format_terms`` for every format (fake quantization of every linear weight + the weighted sums);
- measurement side: ``qscale.collect`` of the same formats with the real panel's first eval
  (``data/sweeps/panel_rtn.yaml``: enwiki test, 17 windows of 512, exact KL) into a temporary store; its
  float pass is counted once, as in a sweep.

``--formats N`` takes the first N formats of ``panel_rtn.yaml``. Writes
``bench/results/profile_cost_<model>.json`` with every timing and the ratio
(profile + N predictions) / (float pass + N x (quantize + eval)).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from qscale.collect.runner import collect
from qscale.collect.spec import load_spec, parse_spec
from qscale.collect.store import RunStore
from qscale.lm import load
from qscale.measure.sensitivity import cached_profile
from qscale.workflows.profile import format_terms

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--formats", type=int, default=30, help="the first N formats of panel_rtn.yaml")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    panel = load_spec(REPO / "data" / "sweeps" / "panel_rtn.yaml")
    formats = list(panel.formats[: a.formats])
    out = a.out or REPO / "bench" / "results" / f"profile_cost_{a.model.replace(':', '_')}.json"
    res: dict = {
        "model": a.model,
        "formats": formats,
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lm = load(a.model)
        res["load_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        prof, _, computed = cached_profile(lm, cache_dir=tmp)
        assert computed
        res["profile_s"] = round(time.perf_counter() - t, 2)
        res["profile"] = {"passes": prof.passes, "tokens": prof.n_tokens, "settings": prof.settings}
        res["fisher_s"] = prof.seconds  # profile_s = the Fisher pass + the noise probe
        res["probe"] = prof.probe
        t = time.perf_counter()
        items = format_terms(lm, prof, formats)
        res["predict_s"] = round(time.perf_counter() - t, 2)
        res["raw"] = {it["format"]: it["raw"] for it in items}
        res["predict_format_s"] = {it["format"]: round(it["seconds"], 3) for it in items}
        print(f"profile {res['profile_s']} s, {len(formats)} predictions {res['predict_s']} s", flush=True)
        del lm
        spec = parse_spec(
            {
                "models": [a.model],
                "formats": formats,
                "eval": dataclasses.asdict(panel.evals[0]),
            }
        )
        t = time.perf_counter()
        with RunStore(Path(tmp) / "runs.sqlite") as st:
            collect(spec, st, progress=False, device="cpu")
            rows = st.rows("ok")
        res["collect_wall_s"] = round(time.perf_counter() - t, 2)
    res["measured"] = {
        r["format"]: {
            "kld": r["metrics"].get("kld"),
            "quantize_s": r["timings"].get("quantize_s"),
            "eval_s": r["timings"].get("eval_s"),
        }
        for r in rows
    }
    res["float_s"] = rows[0]["timings"].get("float_s")  # the model's one float pass, shared by its runs
    measure_s = (res["float_s"] or 0.0) + sum(
        (m["quantize_s"] or 0.0) + (m["eval_s"] or 0.0) for m in res["measured"].values()
    )
    res["measure_s"] = round(measure_s, 2)
    res["ratio"] = round((res["profile_s"] + res["predict_s"]) / measure_s, 4)
    print(
        f"measure side {res['measure_s']} s (float {res['float_s']:.1f} s + {len(rows)} x quantize + eval); "
        f"ratio {res['ratio']}",
        flush=True,
    )
    out.write_text(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
