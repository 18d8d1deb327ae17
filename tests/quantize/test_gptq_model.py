"""GPTQ end to end on a small *trained* model: dnll(GPTQ) < dnll(RTN) at 3 and 4 bits, and calibration on random
tokens vs real text (Paglieri et al. 2024).

The model: a 2-block Llama (d 64) trained here for 120 steps x 64 x 64 tokens on lee_news/train with a 512-token
byte-level BPE trained on the same split (about 35 s on a loaded 2-core CPU). The repository has no ``tiny_zoo``
fixture yet, and the zoo's tiny preset is both slower to build and less trained. Measured on that model (2-core CPU,
96 x 64 validation tokens, 32 x 64 calibration tokens):

==========  ======  ===========  ================
format      RTN     GPTQ (text)  GPTQ (random ids)
==========  ======  ===========  ================
int4-g32    0.0075  0.0057       0.0013
int3-g32    0.0324  0.0150       0.0183
int4-pc     0.0110  0.0049       0.0079
int3-pc     0.0474  0.0222       0.0244
==========  ======  ===========  ================

So GPTQ beats RTN everywhere; random-token vs text calibration differs by a few thousandths of a nat and its
order changes with the trained weights (see the test), so the test asserts only GPTQ < RTN.
"""

from __future__ import annotations

import pytest
import torch

from qscale.quantize import quantized
from tests.helpers import EOT, small_bpe

SEQ = 64


@pytest.fixture(scope="module")
def trained():
    import transformers as tf

    from qscale.corpora import read_split

    docs = read_split("lee_news", "train")
    tok = small_bpe(docs, 512)
    train = torch.tensor(tok(EOT.join(docs))["input_ids"])
    val = torch.tensor(tok(EOT.join(read_split("lee_news", "validation")))["input_ids"])

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = tf.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=8e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        starts = torch.randint(0, train.numel() - SEQ - 1, (64,), generator=g)
        batch = torch.stack([train[s : s + SEQ + 1] for s in starts])
        loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    n = val.numel() // SEQ
    held = val[: n * SEQ].reshape(n, SEQ)[:96]
    starts = torch.randint(0, train.numel() - SEQ, (32,), generator=torch.Generator().manual_seed(1))
    text_calib = torch.stack([train[s : s + SEQ] for s in starts])
    random_calib = torch.randint(0, len(tok), (32, SEQ), generator=torch.Generator().manual_seed(2))
    return model, held, text_calib, random_calib


def _nll(model, held) -> float:
    with torch.no_grad():
        return float(model(held, labels=held).loss)


@pytest.mark.slow
def test_gptq_dnll_below_rtn_at_3_and_4_bits_and_calibration_sets(trained):
    model, held, text_calib, random_calib = trained
    base = _nll(model, held)
    assert base < 4.2  # it learned something (uniform over 512 tokens is 6.24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = {}
    for spec in ("int4-g32", "int3-g32", "int4", "int3"):
        row = {}
        with quantized(model, spec, method="rtn"):
            row["rtn"] = _nll(model, held) - base
        for name, calib in (("text", text_calib), ("random", random_calib)):
            with quantized(model, spec, method="gptq", calib=calib) as info:
                row[name] = _nll(model, held) - base
            assert info["n_samples"] == 32 and info["seq_len"] == SEQ
        res[spec] = row
    for spec, row in res.items():
        assert row["rtn"] > 0, (spec, row)
        assert row["text"] < row["rtn"], (spec, row)
    # Random-token vs text calibration is not asserted: the order is not stable on this tiny model. With
    # transformers 5.24 (other trained weights than the table above, which was measured in an earlier
    # environment) random beat text at 3 bits: int3 0.0217 vs 0.0246, int3-g32 0.0123 vs 0.0150. Paglieri et
    # al. (2024) also find the calibration set matters little. What holds either way: GPTQ with random tokens still beats RTN at 3 bits.
    for spec in ("int3-g32", "int3"):
        assert res[spec]["random"] < res[spec]["rtn"], (spec, res[spec])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _by_hand_true_sequential(model, fmt, calib, groups):
    """Reference: per block, per group in call order, the whole block re-run from the captured inputs with a hook
    per layer accumulating its own Hessian; no sharing, no early stop (the straightforward pipeline)."""
    from qscale.formats import get_format
    from qscale.quantize.gptq import (
        HessianAccumulator,
        capture_block_inputs,
        find_blocks,
        gptq_quantize_weight,
        run_block,
    )

    fmt = get_format(fmt)
    blocks = find_blocks(model)
    inputs = capture_block_inputs(model, blocks[0], calib, batch_size=8)
    for block in blocks:
        for group in groups:
            mods = [block.get_submodule(name) for name in group]
            accs = [HessianAccumulator(m.in_features) for m in mods]

            def hook(acc):
                def f(_m, args):
                    acc.add(args[0])

                return f

            handles = [m.register_forward_pre_hook(hook(a)) for a, m in zip(accs, mods, strict=True)]
            with torch.no_grad():
                for inp in inputs:
                    run_block(block, inp)
            for h in handles:
                h.remove()
            for m, acc in zip(mods, accs, strict=True):
                res = gptq_quantize_weight(m.weight.data, acc.hessian, fmt)
                m.weight.data.copy_(res.q)
        with torch.no_grad():
            inputs = [inp.with_hidden(run_block(block, inp)) for inp in inputs]


def test_block_pipeline_equals_the_straightforward_true_sequential_gptq(trained):
    import copy

    model, _, text_calib, _ = trained
    groups = [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    ref = copy.deepcopy(model)
    _by_hand_true_sequential(ref, "int3-g32", text_calib, groups)
    got = copy.deepcopy(model)
    with quantized(got, "int3-g32", method="gptq", calib=text_calib):
        q = {n: p.detach().clone() for n, p in got.named_parameters()}
    want = dict(ref.named_parameters())
    changed = 0
    for name, p in q.items():
        assert torch.equal(p, want[name].detach()), name
        changed += int(not torch.equal(p, dict(model.named_parameters())[name].detach()))
    assert changed == 14  # 7 linear layers x 2 blocks were quantized, nothing else moved
