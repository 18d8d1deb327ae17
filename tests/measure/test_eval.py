"""qscale.measure.evaluate: NLL/ppl/bpb against float64 by-hand recomputation, KL, top-1, caches."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from qscale.corpora import read_split
from qscale.corpora.windows import tokenize_documents, windows_from_documents
from qscale.measure import ReferenceOutputs, evaluate, evaluate_windows, reference_outputs
from tests.helpers import small_bpe

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def tok():
    return small_bpe(read_split("lee_news", "train")[:60], 384)


def _model(vocab: int, seed: int = 0, init: float = 0.3) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=init,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def model(tok):
    return _model(len(tok))


@pytest.fixture(scope="module")
def perturbed(model):
    torch.manual_seed(1)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.transformer.h.parameters():
            if p.ndim == 2:
                p.add_(0.15 * p.std() * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def docs():
    return read_split("lee_news", "test")[:3]


def _f64_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        return m64(input_ids=ids).logits.log_softmax(-1)


def test_stride_nll_matches_float64_by_hand(tok, model, docs):
    L = 32
    doc = docs[0]
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    n = len(ids) // (L - 1)
    # independent windows: BOS + L-1 tokens, every text token scored
    wins = torch.tensor([[tok.bos_token_id, *ids[i * (L - 1) : (i + 1) * (L - 1)]] for i in range(n)])
    lp = _f64_logprobs(model, wins)
    nll_sum = -lp[:, :-1].gather(2, wins[:, 1:, None]).sum().item()
    n_bytes = len(tok.decode(ids[: n * (L - 1)]).encode("utf-8"))
    w = windows_from_documents(tok, [doc], "stride", L)
    r = evaluate_windows(model, w, batch_size=3)
    assert r["n_tokens"] == n * (L - 1) and r["n_bytes"] == n_bytes
    assert r["nll"] == pytest.approx(nll_sum / (n * (L - 1)), rel=1e-4)
    assert r["ppl"] == pytest.approx(math.exp(nll_sum / (n * (L - 1))), rel=1e-4)
    assert r["bpb"] == pytest.approx(nll_sum / math.log(2) / n_bytes, rel=1e-4)
    assert r["protocol"] == "stride" and r["seq_len"] == L and r["dtype"] == "float32"


def test_rolling_nll_matches_float64_over_masks(tok, model, docs):
    w = windows_from_documents(tok, docs, "rolling", 24, stride=7)
    lp = _f64_logprobs(model, w.input_ids)
    tgt = lp[:, :-1].gather(2, w.input_ids[:, 1:, None]).squeeze(2)
    nll = -(tgt[w.score_mask[:, 1:]]).sum().item() / w.n_scored
    r = evaluate_windows(model, w, batch_size=4)
    assert r["nll"] == pytest.approx(nll, rel=1e-4)
    assert r["n_tokens"] == w.n_scored < w.n_windows * 23


def test_batch_size_invariance_and_window_reuse(model, tok, docs):
    w = windows_from_documents(tok, docs, "stride", 32)
    a = evaluate_windows(model, w, batch_size=1)
    b = evaluate_windows(model, w, batch_size=5)
    c = evaluate_windows(model, w, batch_size=5)
    assert a["nll"] == pytest.approx(b["nll"], rel=1e-6) and b["nll"] == c["nll"]


def test_same_model_reference_has_zero_kld(model, tok, docs):
    w = windows_from_documents(tok, docs, "stride", 32)
    r = evaluate_windows(model, w, reference=model, batch_size=4)
    assert r["kld"] == pytest.approx(0.0, abs=1e-9) and r["top1_agreement"] == 1.0
    assert r["dnll"] == pytest.approx(0.0, abs=1e-9) and r["reference_nll"] == pytest.approx(
        r["nll"], rel=1e-9
    )
    ref = reference_outputs(model, w, top_k=None, batch_size=4)
    rc = evaluate_windows(model, w, reference=ref, batch_size=4)
    assert rc["kld"] == pytest.approx(0.0, abs=1e-9) and rc["top1_agreement"] == 1.0


def test_kld_and_top1_equal_by_hand_on_one_window(model, perturbed, tok, docs):
    L = 32
    w = windows_from_documents(tok, docs, "stride", L, max_tokens=L - 1)
    assert w.n_windows == 1 and w.n_scored == L - 1
    lp = _f64_logprobs(model, w.input_ids)[0, :-1]
    lq = _f64_logprobs(perturbed, w.input_ids)[0, :-1]
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    top1 = (lp.argmax(-1) == lq.argmax(-1)).double().mean().item()
    r = evaluate_windows(perturbed, w, reference=model)
    assert kl > 1e-3
    assert r["kld"] == pytest.approx(kl, rel=1e-4)
    assert r["top1_agreement"] == pytest.approx(top1, abs=1e-12)
    assert 0.0 < r["top1_agreement"] < 1.0
    ref = reference_outputs(model, w, top_k=None)
    assert ref.exact
    rc = evaluate_windows(perturbed, w, reference=ref)
    assert rc["kld"] == pytest.approx(kl, rel=1e-4) and rc["top1_agreement"] == r["top1_agreement"]


def test_topk_cache_is_a_lower_bound_with_the_documented_gap(model, perturbed, tok, docs):
    w = windows_from_documents(tok, docs, "rolling", 32)
    exact = evaluate_windows(perturbed, w, reference=model, batch_size=8)
    lp = _f64_logprobs(model, w.input_ids)[:, :-1][w.score_mask[:, 1:]]
    lq = _f64_logprobs(perturbed, w.input_ids)[:, :-1][w.score_mask[:, 1:]]
    errs = []
    for k in (4, 32, 128):
        ref = reference_outputs(model, w, top_k=k, batch_size=8)
        assert isinstance(ref, ReferenceOutputs) and ref.logp.shape == (w.n_scored, k) and ref.top_k == k
        r = evaluate_windows(perturbed, w, reference=ref, batch_size=8)
        assert r["kld_top_k"] == k and r["kld_coverage"] == pytest.approx(ref.coverage)
        assert r["top1_agreement"] == exact["top1_agreement"]
        assert r["reference_nll"] == pytest.approx(exact["reference_nll"], rel=1e-6)
        assert r["nll"] == pytest.approx(exact["nll"], rel=1e-6)
        # chain rule, by hand in float64: KL - KL_k = p_rest * KL(p_tail || q_tail)
        top = lp.topk(k, dim=-1).indices
        tail = torch.ones_like(lp, dtype=torch.bool).scatter(1, top, False)
        p_rest = (lp.exp() * tail).sum(-1)
        q_rest = (lq.exp() * tail).sum(-1)
        lpt = lp - p_rest.log()[:, None]
        lqt = lq - q_rest.log()[:, None]
        gap = (p_rest * (lpt.exp() * (lpt - lqt) * tail).sum(-1)).mean().item()
        assert exact["kld"] - r["kld"] == pytest.approx(gap, rel=2e-3)
        assert r["kld"] <= exact["kld"]
        assert ref.coverage == pytest.approx(1 - p_rest.mean().item(), rel=1e-5)
        errs.append((exact["kld"] - r["kld"]) / exact["kld"])
    assert errs[0] > errs[1] > errs[2] > 0
    auto = reference_outputs(model, w)  # small table: "auto" stores everything
    assert auto.exact and auto.top_k is None and auto.logp.shape == (w.n_scored, len(tok))
    spilled = reference_outputs(model, w, max_bytes=1000)  # over the RAM budget: still exact, memory-mapped
    assert spilled.exact and spilled.top_k is None and spilled.coverage == 1.0
    assert torch.equal(spilled.logp, auto.logp)  # the same fp32 table, read back from the file
    r_spill, r_mem = (
        evaluate_windows(perturbed, w, reference=spilled),
        evaluate_windows(perturbed, w, reference=auto),
    )
    assert r_spill["kld"] == r_mem["kld"] == pytest.approx(exact["kld"], rel=1e-5)
    assert r_spill["kld_is_bound"] is False
    assert (
        evaluate_windows(perturbed, w, reference=reference_outputs(model, w, top_k=32))["kld_is_bound"]
        is True
    )
    assert reference_outputs(model, w, top_k=10_000).exact  # top_k >= vocab stores everything
    with pytest.raises(ValueError, match="top_k"):
        reference_outputs(model, w, top_k=0)


def test_evaluate_by_corpus_name_and_reference_mismatch(model, tok):
    r = evaluate(model, tok, corpus="lee_news", split="test", protocol="rolling", seq_len=32, max_tokens=300)
    assert r["corpus"] == "lee_news" and r["split"] == "test" and r["protocol"] == "rolling"
    stream = tokenize_documents(tok, read_split("lee_news", "test"))
    assert r["n_tokens"] == 300 - int(stream.is_sep[:300].sum())  # BOS: every non-separator scored
    assert r["n_bytes"] == int(stream.n_bytes[:300].sum())
    assert r["bpb"] == pytest.approx(r["nll"] * r["n_tokens"] / math.log(2) / r["n_bytes"], rel=1e-12)
    ref = reference_outputs(
        model, tok, corpus="lee_news", split="test", protocol="rolling", seq_len=32, max_tokens=300
    )
    same = evaluate(
        model,
        tok,
        corpus="lee_news",
        split="test",
        protocol="rolling",
        seq_len=32,
        max_tokens=300,
        reference=ref,
    )
    assert same["kld"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="different windows"):
        evaluate(model, tok, corpus="lee_news", split="test", protocol="stride", seq_len=32, reference=ref)


def test_bf16_runs_close_to_fp32(model, tok, docs):
    w = windows_from_documents(tok, docs, "stride", 32)
    r32 = evaluate_windows(model, w)
    m16 = copy.deepcopy(model)
    r16 = evaluate_windows(m16, w, dtype="bf16")
    assert r16["dtype"] == "bfloat16" and next(m16.parameters()).dtype == torch.bfloat16
    assert r16["nll"] == pytest.approx(r32["nll"], rel=2e-2) and r16["nll"] != r32["nll"]
    with pytest.raises(ValueError, match="valid choices"):
        evaluate_windows(m16, w, dtype="fp12")


def test_bad_inputs(model, tok, docs):
    w = windows_from_documents(tok, docs, "stride", 32)
    with pytest.raises(TypeError, match="EvalWindows"):
        evaluate_windows(model, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="reference must be"):
        evaluate_windows(model, w, reference=3.0)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_windows(model, w, batch_size=0)


class Bigram(torch.nn.Module):
    """A plain module (no HF output object): logits depend only on the previous token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.table = torch.nn.Embedding(vocab, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


def test_plain_module_bigram_nll_by_hand(tok, docs):
    m = Bigram(len(tok))
    w = windows_from_documents(tok, docs, "stride", 16)
    table = m.table.weight.double().log_softmax(-1)
    ids = w.input_ids
    logp = table[ids[:, :-1], ids[:, 1:]]  # log p(t_j | t_{j-1})
    nll = -logp[w.score_mask[:, 1:]].sum().item() / w.n_scored
    assert evaluate_windows(m, w)["nll"] == pytest.approx(nll, rel=1e-6)


def test_rolling_kl_on_scored_rows_matches_float64_and_the_head_sees_only_them(model, perturbed, tok, docs):
    # rolling windows score a different subset of positions per window: the head must get exactly those rows
    w = windows_from_documents(tok, docs, "rolling", 24, stride=7)
    mask = w.score_mask[:, 1:]
    lp = _f64_logprobs(model, w.input_ids)[:, :-1][mask]
    lq = _f64_logprobs(perturbed, w.input_ids)[:, :-1][mask]
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    rows: list[int] = []
    handle = perturbed.get_output_embeddings().register_forward_hook(
        lambda _m, _a, out: rows.append(out.reshape(-1, out.shape[-1]).shape[0])
    )
    try:
        ref = reference_outputs(model, w, top_k=None, batch_size=3)
        r = evaluate_windows(perturbed, w, reference=ref, batch_size=3)
    finally:
        handle.remove()
    assert sum(rows) == w.n_scored < w.n_windows * 24  # the head ran on the scored rows only
    assert r["kld"] == pytest.approx(kl, rel=1e-4) and kl > 1e-3
    paired = evaluate_windows(perturbed, w, reference=model, batch_size=3)
    assert paired["kld"] == pytest.approx(kl, rel=1e-4)


class ReshapingHead(torch.nn.Module):
    """An LM whose forward needs the head's output as (B, L, V): scoring falls back to the full logits."""

    def __init__(self, inner: GPT2LMHeadModel) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.inner.lm_head

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.inner.transformer(input_ids=input_ids).last_hidden_state
        logits = self.inner.lm_head(h)
        return logits.view(input_ids.shape[0], input_ids.shape[1], -1)


def test_a_forward_that_reshapes_the_head_output_gets_the_full_logits(model, perturbed, tok, docs):
    w = windows_from_documents(tok, docs, "rolling", 24, stride=7)
    ref = reference_outputs(model, w, top_k=None, batch_size=4)
    direct = evaluate_windows(perturbed, w, reference=ref, batch_size=4)
    wrapped = evaluate_windows(ReshapingHead(perturbed), w, reference=ref, batch_size=4)
    assert wrapped["nll"] == pytest.approx(direct["nll"], rel=1e-5)
    assert wrapped["kld"] == pytest.approx(direct["kld"], rel=1e-4)


def test_bf16_autocast_adds_a_small_kl_against_the_fp32_reference(model, tok, docs):
    w = windows_from_documents(tok, docs, "stride", 32)
    ref = reference_outputs(model, w, top_k=None, batch_size=4)
    r = evaluate_windows(model, w, reference=ref, batch_size=4, autocast="bf16")
    assert r["autocast"] == "bfloat16" and next(model.parameters()).dtype == torch.float32
    # bf16 keeps 8 significant bits: logits move by ~1e-2 relative, so KL is small but not zero
    assert 1e-7 < r["kld"] < 1e-2 and r["nll"] == pytest.approx(ref.nll, rel=2e-2)
    assert "autocast" not in evaluate_windows(model, w, reference=ref, batch_size=4)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        evaluate_windows(model, w, autocast="fp64")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_matches_cpu_and_does_not_sync_per_batch(model, perturbed, tok, docs):
    import warnings

    w = windows_from_documents(tok, docs, "rolling", 32)
    cpu = evaluate_windows(perturbed, w, reference=model)
    g, gp = copy.deepcopy(model).cuda(), copy.deepcopy(perturbed).cuda()
    ref = reference_outputs(g, w)
    res = evaluate_windows(gp, w, reference=ref)
    assert res["device"].startswith("cuda")
    for key in ("nll", "kld", "top1_agreement"):
        assert res[key] == pytest.approx(cpu[key], rel=1e-3, abs=1e-6)
    bf = evaluate_windows(copy.deepcopy(perturbed).cuda(), w, dtype="bf16", reference=ref)
    assert bf["nll"] == pytest.approx(cpu["nll"], rel=2e-2)
    # host syncs: a plain module (HF forwards may sync on their own) -> the count must not grow with batches
    m = Bigram(len(tok)).cuda()
    counts = []
    for bs in (1, 64):
        w.batches(bs, "cuda")  # transfers happen here, before the loop
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                evaluate_windows(m, w, batch_size=bs, progress=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(r.message) for r in rec))
    assert w.n_windows > 8 and counts[0] == counts[1] <= 2


def test_dropout_is_off_while_measuring_and_mode_restored(tok, docs):
    m = _model(len(tok))
    m.train()  # GPT-2 has dropout 0.1: a train-mode forward would be random
    w = windows_from_documents(tok, docs, "stride", 32)
    a = evaluate_windows(m, w)
    b = evaluate_windows(m, w, reference=m)
    assert m.training
    assert a["nll"] == pytest.approx(evaluate_windows(m.eval(), w)["nll"], rel=1e-9)
    assert b["kld"] == pytest.approx(0.0, abs=1e-9)
