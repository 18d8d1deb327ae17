"""Per-token KL of an RTN format on the eval windows (enwiki test, stride 17x512) and on the calibration rows."""

import json
import sys

import numpy as np
import torch

from qscale.corpora import calibration_batch
from qscale.corpora.windows import get_windows
from qscale.formats.spec import get_format
from qscale.lm import load
from qscale.measure.probe import probe_windows, rows_windows
from qscale.measure.sensitivity import default_calibration
from qscale.quantize import quantized

torch.set_num_threads(2)
lm = load(sys.argv[1])
model = lm.model
fmts = sys.argv[2].split(",")
cal = default_calibration(lm)
wins = {
    "calib": rows_windows(
        calibration_batch(lm.tokenizer, cal["corpus"], cal["n_samples"], cal["seq_len"], cal["seed"])
    ),
    "probe_rows": probe_windows(lm.tokenizer),
    "test": get_windows(lm.tokenizer, "enwiki_gensim", "test", "stride", 512, max_tokens=8704),
}


def logp(w):
    """Per window, the log-probs at the positions whose prediction is scored (EvalWindows.batches' index)."""
    with torch.no_grad():
        return [
            model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)[flat]
            for ids, flat, _, _ in w.batches(1)
        ]


fl = {k: logp(v) for k, v in wins.items()}
out = {}
for fs in fmts:
    fmt = get_format(fs)
    with quantized(model, fmt):
        qls = {k: logp(v) for k, v in wins.items()}
    for k, ql in qls.items():
        rows = []
        for a, b in zip(fl[k], ql, strict=True):
            rows.append((a.exp() * (a - b)).sum(-1))
        kl = torch.cat(rows).numpy()
        per_row = [float(x.mean()) for x in rows]
        s = np.sort(kl)[::-1]
        out[(fs, k)] = kl
        print(
            fs,
            k,
            json.dumps(
                {
                    "n": len(kl),
                    "mean": float(kl.mean()),
                    "median": float(np.median(kl)),
                    "top1pct_share": float(s[: len(s) // 100].sum() / s.sum()),
                    "top10_tokens_share": float(s[:10].sum() / s.sum()),
                    "row_means": [round(x, 4) for x in per_row],
                }
            ),
            flush=True,
        )
np.savez(
    "bench/results/kl_tokens_{}.npz".format(sys.argv[1].split(":")[1]),
    **{f"{a}|{b}": v for (a, b), v in out.items()},
)
