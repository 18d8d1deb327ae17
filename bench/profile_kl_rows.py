"""Measured KL of t * (RTN error) on the profile's calibration rows (the tokens the GN quadratic used)."""

import json
import sys

import torch

from qscale.corpora import calibration_batch
from qscale.formats.spec import get_format
from qscale.kernels import fake_quant
from qscale.lm import load
from qscale.lm.layers import linear_layers
from qscale.measure.eval import evaluate_windows, reference_outputs
from qscale.measure.landscape import _perturbed
from qscale.measure.probe import rows_windows
from qscale.measure.sensitivity import default_calibration

torch.set_num_threads(2)
lm = load(sys.argv[1])
model = lm.model
cal = default_calibration(lm)
calib = calibration_batch(lm.tokenizer, cal["corpus"], cal["n_samples"], cal["seq_len"], cal["seed"])
win = rows_windows(calib)
ref = reference_outputs(model, win, top_k=None, batch_size=4, progress=False)
refs = linear_layers(model)
for spec in sys.argv[2].split(","):
    fs, t = spec.split("@") if "@" in spec else (spec, "1")
    t = float(t)
    fmt = get_format(fs)
    deltas = []
    for r in refs:
        w = r.get_weight().float()
        d = t * (fake_quant(fmt, w) - w)
        deltas.append(d.t() if r.transposed else d)
    with _perturbed([r.weight for r in refs], deltas):
        res = evaluate_windows(model, win, reference=ref, batch_size=4, progress=False)
    print(fs, t, json.dumps({"kld": float(res["kld"])}), flush=True)
