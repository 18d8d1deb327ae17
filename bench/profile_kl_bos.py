"""Exact KL of an RTN format on the enwiki test windows (stride 17 x 512) with BOS forced and without, per window.

    python bench/profile_kl_bos.py panel:qwen2.5-coder-0.5b int6-pc

Two copies of the model (float and RTN-quantized), one window at a time, KL at every scored position
(``EvalWindows.batches`` gives the positions). Prints, per layout, the mean KL, the per-window means and the first
six scored positions of windows 0, 2, 10 and 16.
"""

import copy
import sys

import torch

from qscale.corpora.windows import get_windows
from qscale.formats.spec import get_format
from qscale.lm import load
from qscale.quantize import quantized

torch.set_num_threads(2)
lm = load(sys.argv[1])
model = lm.model
qm = copy.deepcopy(model)
fmt = get_format(sys.argv[2])
layouts = {
    "bos": get_windows(lm.tokenizer, "enwiki_gensim", "test", "stride", 512, max_tokens=8704, add_bos=True),
    "nobos": get_windows(
        lm.tokenizer, "enwiki_gensim", "test", "stride", 512, max_tokens=8704, add_bos=False
    ),
}
with quantized(qm, fmt), torch.no_grad():
    for name, w in layouts.items():
        kls = []
        for ids, flat, _, _ in w.batches(1):
            a = model(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)[flat]
            b = qm(input_ids=ids, use_cache=False).logits[0].float().log_softmax(-1)[flat]
            kls.append((a.exp() * (a - b)).sum(-1))
            del a, b
        every = torch.cat(kls)
        print(name, "n", len(every), "mean", round(float(every.mean()), 4),
              "row means", [round(float(x.mean()), 3) for x in kls], flush=True)  # fmt: skip
        print(name, "first 6 KL of rows 0,2,10,16:",
              [[round(float(v), 3) for v in kls[r][:6]] for r in (0, 2, 10, 16)], flush=True)  # fmt: skip
