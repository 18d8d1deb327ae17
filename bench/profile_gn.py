"""Exact Gauss-Newton quadratic along each format's RTN error (one JVP per row) vs the diagonal raw vs measured."""

import json
import sys
import time

import torch
from torch.func import functional_call, jvp

from qscale.corpora import calibration_batch
from qscale.formats.spec import get_format
from qscale.kernels import fake_quant
from qscale.lm import load
from qscale.lm.layers import linear_layers
from qscale.measure.sensitivity import cached_profile, default_calibration

torch.set_num_threads(2)
model_name = sys.argv[1]
fmts = sys.argv[2].split(",")
include = sys.argv[3] if len(sys.argv) > 3 else None
lm = load(model_name)
model = lm.model
prof, _, _ = cached_profile(lm)
cal = default_calibration(lm)
calib = calibration_batch(lm.tokenizer, cal["corpus"], cal["n_samples"], cal["seq_len"], cal["seed"])
refs = linear_layers(model, exclude=prof.settings.get("exclude"))
if include:
    import fnmatch

    refs = [r for r in refs if fnmatch.fnmatchcase(r.name, include)]
pname = {id(p): n for n, p in model.named_parameters()}
out = {}
for fs in fmts:
    fmt = get_format(fs)
    tang = {}
    primals = {}
    qs = {}
    for r in refs:
        w = r.get_weight().float()
        qs[r.name] = fake_quant(fmt, w)
        d = qs[r.name] - w
        n = pname[id(r.weight)]
        primals[n] = r.weight.detach()
        tang[n] = (d.t() if r.transposed else d).to(r.weight.dtype).contiguous()
    terms = prof.layer_terms(model, fmt, weights=lambda ref, qs=qs: qs[ref.name])
    raw = sum(terms[r.name]["kld"] for r in refs)
    t0 = time.perf_counter()
    tot = 0.0
    ntok = 0
    with torch.no_grad():
        for i in range(calib.shape[0]):
            ids = calib[i : i + 1]

            def f(p, ids=ids):
                return functional_call(model, p, (ids,), {"use_cache": False}).logits[0].float()

            z, dz = jvp(f, (primals,), (tang,))
            p = z.log_softmax(-1).exp()
            m = (p * dz).sum(-1)
            q = (p * dz * dz).sum(-1) - m * m
            tot += 0.5 * float(q[1:].sum())
            ntok += ids.shape[1] - 1
            del z, dz, p
    gn = tot / ntok
    out[fs] = {"raw": raw, "gn": gn, "seconds": time.perf_counter() - t0}
    print(fs, json.dumps(out[fs]), flush=True)
