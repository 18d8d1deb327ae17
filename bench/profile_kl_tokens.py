"""Per-token KL of an RTN format on the eval windows (enwiki test, stride 17x512) and on the calibration rows."""

import json
import sys

import numpy as np
import torch

from qscale.corpora import calibration_batch
from qscale.corpora.windows import get_windows
from qscale.formats.spec import get_format
from qscale.kernels import fake_quant
from qscale.lm import load
from qscale.lm.layers import linear_layers
from qscale.measure.sensitivity import default_calibration

torch.set_num_threads(2)
lm = load(sys.argv[1])
model = lm.model
fmts = sys.argv[2].split(",")
cal = default_calibration(lm)
sets = {
    "calib": calibration_batch(lm.tokenizer, cal["corpus"], cal["n_samples"], cal["seq_len"], cal["seed"]),
    "probe_rows": calibration_batch(lm.tokenizer, cal["corpus"], 8, 512, 1),
}
w = get_windows(lm.tokenizer, "enwiki_gensim", "test", "stride", 512, max_tokens=8704)
sets["test"] = w.input_ids
masks = {"test": w.score_mask}


def logp(ids):
    with torch.no_grad():
        return [
            model(input_ids=ids[i : i + 1], use_cache=False).logits[0].float().log_softmax(-1)
            for i in range(ids.shape[0])
        ]


refs = linear_layers(model)
fl = {k: logp(v) for k, v in sets.items()}
out = {}
for fs in fmts:
    fmt = get_format(fs)
    saved = {}
    with torch.no_grad():
        for r in refs:
            ww = r.get_weight()
            saved[r.name] = ww.detach().clone()
            r.set_weight(fake_quant(fmt, ww.float()))
    for k, v in sets.items():
        ql = logp(v)
        kl = []
        for i, (a, b) in enumerate(zip(fl[k], ql, strict=True)):
            t = (a.exp() * (a - b)).sum(-1)
            m = masks[k][i] if k in masks else torch.arange(len(t)) > 0
            kl.append(t[m])
        kl = torch.cat(kl).numpy()
        per_row = [float(x.mean()) for x in torch.split(torch.tensor(kl), 511)]
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
    for r in refs:
        r.set_weight(saved[r.name])
np.savez(
    "bench/results/kl_tokens_{}.npz".format(sys.argv[1].split(":")[1]),
    **{f"{a}|{b}": v for (a, b), v in out.items()},
)
