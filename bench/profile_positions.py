"""How the profile's Fisher mass spreads over calibration rows and over positions (bench/profile.md, "Row draw").

For each of 12 rows of 512 tokens (the default calibration's rows for seeds 0, 1, 2; enwiki train), one forward
pass, one label draw from the model, and two backward passes: the loss of the first ``K`` positions (A) and of the
rest (B). Each is scored as sum_ij g_ij^2 dW_ij^2 with dW the int4-g128 RTN error, i.e. that row's and stratum's
share of the raw prediction (before the 1/(2N)). The spread of A + B across rows is the noise of a 4-row
profile's level; the share of A says how much the first positions of a row (attention sink, little context)
carry.

    python bench/profile_positions.py panel:qwen2.5-coder-0.5b 16

Writes ``bench/results/profile_positions_<model>.json`` (one record per row) and prints the per-row records.
"""

import json
import sys
import time
from pathlib import Path

import torch

from qscale.corpora import calibration_batch
from qscale.kernels import fake_quant
from qscale.lm import load
from qscale.lm.layers import linear_layers
from qscale.paths import model_slug

model_name = sys.argv[1]
K = int(sys.argv[2]) if len(sys.argv) > 2 else 16
lm = load(model_name)
refs = linear_layers(lm.model)
d2 = {}
for r in refs:
    w = r.get_weight().float()
    d2[r.name] = (fake_quant("int4-g128", w).float() - w).square()
params = list(lm.model.parameters())
for p in params:
    p.requires_grad_(False)
for r in refs:
    r.weight.requires_grad_(True)
gen = torch.Generator().manual_seed(0)
out = []
t = time.perf_counter()
for seed in (0, 1, 2):
    calib = calibration_batch(lm.tokenizer, "enwiki_gensim", 4, 512, seed)
    for i in range(calib.shape[0]):
        ids = calib[i : i + 1]
        logp = lm.model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)
        labels = torch.multinomial(logp.detach().exp(), 1, generator=gen).squeeze(1)
        tok = -logp.gather(1, labels[:, None]).squeeze(1)
        row = {"seed": seed, "row": i}
        for name, sl in (("A", slice(0, K)), ("B", slice(K, None))):
            for r in refs:
                r.weight.grad = None
            tok[sl].sum().backward(retain_graph=(name == "A"))
            tot = 0.0
            for r in refs:
                g = r.weight.grad
                g = g.t() if r.transposed else g
                tot += float((g.square() * d2[r.name]).sum())
            row[name] = tot
        out.append(row)
        print(json.dumps(row), flush=True)
print("seconds", time.perf_counter() - t)
slug = model_slug(model_name)
res = Path(__file__).parent / "results" / f"profile_positions_{slug}.json"
res.write_text(json.dumps({"model": model_name, "K": K, "format": "int4-g128", "rows": out}, indent=1) + "\n")
