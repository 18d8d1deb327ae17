"""Exactness tests of qscale.measure.landscape against full float64 Hessians of tiny transformers.

The references are independent of the code under test: the Hessian is built by
torch.autograd.functional.hessian over a flat parameter vector through torch.func.functional_call, the loss
recomputed from log_softmax, eigenvalues come from torch.linalg.eigvalsh, and one test checks that reference
against central finite differences of the gradient.

Two findings shaped the fixtures (torch 2.13, transformers 5.23): Llama's RMSNorm and rotary embedding
compute in float32 even in a float64 model (its "exact" Hessian is asymmetric at 1e-6), so the exactness tests
use GPT-2 (LayerNorm, no upcast); and torch.func.hessian / jacrev(jacrev) return a wrong (asymmetric, 0.06
off) Hessian for the tiny GPT-2 while torch.autograd.functional.hessian and finite differences agree to 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from qscale.measure.landscape import (
    CurvatureError,
    directional_terms,
    group_name,
    hessian_top_eigenvalues,
    hessian_trace,
    hvp,
    lm_loss,
    quant_direction_terms,
    radial_profile,
    random_directions,
)

VOCAB = 32


def _llama(seed: int = 0, attn: str = "eager", dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():  # norms away from exactly 1 so their curvature is generic
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _gpt2(seed: int = 0, dtype=torch.float64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=8,
        n_layer=1,
        n_head=2,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg).to(dtype)
    with torch.no_grad():  # GPT-2 starts with zero biases; give them values so D and H are generic
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def _ids(seed: int = 1, batch: int = 2, seq: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=gen)


def _reference_loss(model, params: dict, ids: torch.Tensor) -> torch.Tensor:
    logits = functional_call(model, params, (ids,), {"use_cache": False}).logits
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).mean()


def _flat_loss(model, ids):
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]

    def f(x):
        parts = torch.split(x, sizes)
        return _reference_loss(
            model, {n: c.view(s) for n, c, s in zip(names, parts, shapes, strict=False)}, ids
        )

    return f


def _exact(model, ids):
    """(names, shapes, flat params, gradient, Hessian) of the batch loss, float64, via torch.func."""
    model.eval()
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def f(x):
        parts = torch.split(x, sizes)
        return _reference_loss(
            model, {n: c.view(s) for n, c, s in zip(names, parts, shapes, strict=False)}, ids
        )

    x = flat.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x), x)
    hess = torch.autograd.functional.hessian(f, flat, vectorize=True)
    return names, sizes, flat, grad, hess


@pytest.fixture(scope="module")
def case():
    model = _gpt2()
    ids = _ids(seed=3, seq=10)
    names, sizes, flat, grad, hess = _exact(model, ids)
    return model, ids, names, sizes, grad, hess


def _offsets(sizes):
    out, o = [], 0
    for s in sizes:
        out.append((o, o + s))
        o += s
    return out


def test_loss_matches_transformers_labels_loss():
    model = _llama(dtype=torch.float32)
    ids = _ids()
    ours = float(lm_loss(model, ids).detach())
    theirs = float(model(ids, labels=ids).loss)
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert 2.0 < ours < 5.0  # about log(32) = 3.47 for an untrained model


def test_reference_hessian_is_symmetric_and_matches_finite_differences(case):
    model, ids, names, sizes, _, hess = case
    assert hess.shape == (sum(sizes), sum(sizes))
    assert 500 < sum(sizes) < 3000
    assert torch.allclose(hess, hess.T, atol=1e-12)
    f = _flat_loss(model, ids)
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def grad(x):
        x = x.clone().requires_grad_()
        return torch.autograd.grad(f(x), x)[0]

    v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eps = 1e-5
    fd = (grad(flat + eps * v) - grad(flat - eps * v)) / (2 * eps)
    assert torch.allclose(fd, hess @ v, rtol=1e-5, atol=1e-5)


def test_hvp_equals_exact_hessian_times_v(case):
    model, ids, names, sizes, _, hess = case
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(sum(sizes), generator=gen, dtype=torch.float64)
    params = [p for _, p in model.named_parameters()]
    vs = [v[a:b].view(p.shape) for (a, b), p in zip(_offsets(sizes), params, strict=False)]
    hv = torch.cat([h.reshape(-1) for h in hvp(model, ids, vs)])
    ref = hess @ v
    assert torch.allclose(hv, ref, rtol=1e-9, atol=1e-11)
    assert float(ref.norm()) > 1e-3  # not a vacuous comparison


def test_hvp_on_a_parameter_subset_is_the_diagonal_block(case):
    model, ids, names, sizes, _, hess = case
    j = names.index("transformer.h.0.mlp.c_fc.weight")
    a, b = _offsets(sizes)[j]
    p = dict(model.named_parameters())[names[j]]
    v = torch.linspace(-1, 1, p.numel(), dtype=torch.float64)
    (hv,) = hvp(model, ids, [v.view(p.shape)], params=[names[j]])
    assert torch.allclose(hv.reshape(-1), hess[a:b, a:b] @ v, rtol=1e-9, atol=1e-11)


def test_trace_within_three_stderr_and_groups_add_up(case):
    model, ids, names, sizes, _, hess = case
    t = hessian_trace(model, ids, samples=64, seed=0)
    exact = float(torch.diagonal(hess).sum())
    assert t.samples == 64 and t.n_params == sum(sizes)
    assert t.stderr > 0
    assert abs(t.value - exact) < 3 * t.stderr, (t.value, t.stderr, exact)
    assert t.per_param == pytest.approx(t.value / sum(sizes))
    # Per-group parts of every sample add up to the sample's total, hence the group means to the total mean.
    groups = t.groups("block")
    assert set(groups) == {"transformer.wte", "transformer.wpe", "transformer.h.0", "transformer.ln_f"}
    assert math.fsum(g.value for g in groups.values()) == pytest.approx(t.value, rel=1e-12, abs=1e-12)
    assert sum(g.n_params for g in groups.values()) == sum(sizes)
    # Each group's estimate is within 3 of its own stderr of the exact diagonal-block trace.
    offs = _offsets(sizes)
    for g, est in t.groups("tensor").items():
        a, b = offs[names.index(g)]
        block = float(torch.diagonal(hess[a:b, a:b]).sum())
        assert abs(est.value - block) <= 3 * est.stderr + 1e-12, (g, est, block)


def test_each_hutchinson_sample_is_exact_vhv(case):
    """Rebuild the Rademacher vectors (same generator, same order) and check every sample against v^T H v."""
    from qscale.measure.landscape import _generator, _rademacher

    model, ids, names, sizes, _, hess = case
    t = hessian_trace(model, ids, samples=5, seed=42, group_by="tensor")
    gen = _generator(42)
    params = [p for _, p in model.named_parameters()]
    for row in t.tensor_samples:
        v = torch.cat([_rademacher(p, gen).reshape(-1) for p in params])
        assert set(v.unique().tolist()) == {-1.0, 1.0}
        assert math.fsum(row) == pytest.approx(float(v @ hess @ v), rel=1e-10, abs=1e-10)
        for (a, b), got in zip(_offsets(sizes), row, strict=True):
            assert got == pytest.approx(float(v[a:b] @ hess[a:b] @ v), rel=1e-9, abs=1e-10)


def test_trace_of_a_subset_and_determinism(case):
    model, ids, names, sizes, _, hess = case
    sub = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_proj.weight"]
    t1 = hessian_trace(model, ids, params=sub, samples=32, seed=7, group_by="layer")
    t2 = hessian_trace(model, ids, params=sub, samples=32, seed=7, group_by="layer")
    assert t1.value == t2.value and t1.stderr == t2.stderr
    offs = _offsets(sizes)
    exact = sum(float(torch.diagonal(hess[a:b, a:b]).sum()) for a, b in (offs[names.index(n)] for n in sub))
    assert abs(t1.value - exact) < 3 * t1.stderr
    assert set(t1.per_group) == {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"}


def test_top_eigenvalues_lanczos_match_eigvalsh(case):
    model, ids, _, _, _, hess = case
    ref = torch.linalg.eigvalsh(hess).flip(0)  # largest first
    e = hessian_top_eigenvalues(model, ids, k=3, iters=200, tol=1e-6, seed=0)
    assert e.method == "lanczos"
    assert len(e.values) == 3 and e.values[0] >= e.values[1] >= e.values[2]
    for got, want in zip(e.values, ref[:3].tolist(), strict=False):
        assert got == pytest.approx(want, rel=0.01)
    e1 = hessian_top_eigenvalues(model, ids)  # defaults: k=1, iters=100, tol=1e-4
    assert e1.converged and e1.values[0] == pytest.approx(float(ref[0]), rel=0.01)


def test_top_eigenvalue_power_is_largest_magnitude(case):
    model, ids, _, _, _, hess = case
    ev = torch.linalg.eigvalsh(hess)
    want = float(ev[ev.abs().argmax()])
    e = hessian_top_eigenvalues(model, ids, k=1, iters=2000, tol=1e-9, method="power")
    assert e.values[0] == pytest.approx(want, rel=0.01)


def _rtn_rows(bits: int):
    """A plain symmetric per-row round-to-nearest quantizer on the (out, in) layout (test-side reference)."""
    qmax = 2 ** (bits - 1) - 1

    def fq(w: torch.Tensor) -> torch.Tensor:
        scale = w.abs().amax(dim=1, keepdim=True) / qmax
        return torch.round(w / scale) * scale

    fq.__name__ = f"rtn{bits}"
    return fq


def _padded_direction(model, names, sizes, per_name: dict[str, torch.Tensor]) -> torch.Tensor:
    d = torch.zeros(sum(sizes), dtype=torch.float64)
    for (a, b), n in zip(_offsets(sizes), names, strict=False):
        if n in per_name:
            d[a:b] = per_name[n].reshape(-1)
    return d


def test_quant_direction_terms_equal_exact_gd_and_dhd_conv1d(case):
    model, ids, names, sizes, grad, hess = case
    fq = _rtn_rows(4)
    q = quant_direction_terms(model, ids, fq)
    assert q.format == "rtn4"
    # Reference D built here independently: Conv1D weights are (in, out); quantize rows of the transpose.
    ref_d = {}
    for n, p in model.named_parameters():
        if n.startswith("transformer.h.0.") and n.endswith(".weight") and p.dim() == 2:
            w = p.detach().t()
            ref_d[n] = (fq(w) - w).t()
    assert len(ref_d) == 4 and q.n_params == sum(d.numel() for d in ref_d.values())
    d = _padded_direction(model, names, sizes, ref_d)
    assert q.linear == pytest.approx(float(grad @ d), rel=1e-9)
    assert q.quadratic == pytest.approx(0.5 * float(d @ hess @ d), rel=1e-9)
    assert q.d_norm == pytest.approx(float(d.norm()), rel=1e-12)
    assert math.fsum(q.per_layer_quadratic.values()) == pytest.approx(q.quadratic, rel=1e-12)
    assert set(q.per_layer_linear) == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    }
    # per-layer linear term: g_l . D_l
    j = names.index("transformer.h.0.mlp.c_fc.weight")
    a, b = _offsets(sizes)[j]
    assert q.per_layer_linear["transformer.h.0.mlp.c_fc"] == pytest.approx(
        float(grad[a:b] @ ref_d[names[j]].reshape(-1)), rel=1e-9
    )


def test_second_order_prediction_matches_measured_loss_change():
    """The whole chain: prediction g.D + 1/2 D^T H D vs the loss of the really perturbed model.

    The Taylor remainder is third order, so halving the perturbation must shrink the error ~8x.
    """
    model = _gpt2(seed=2)
    ids = _ids(seed=4, batch=2, seq=12)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    q = quant_direction_terms(model, ids, _rtn_rows(8), measure=True)
    for n, p in model.named_parameters():  # restored bit-exactly
        assert torch.equal(p, before[n])
    assert q.measured_dloss is not None and abs(q.measured_dloss) > 1e-6
    assert q.predicted_dloss == pytest.approx(q.measured_dloss, rel=0.02)
    # Scale the same direction by t and compare with the measured change at W + t D.
    from qscale.measure.landscape import _perturbed, quant_directions

    _, _, weights, ds = quant_directions(model, _rtn_rows(4))
    errs = []
    for t in (1.0, 0.5):
        dt = [t * d for d in ds]
        loss0, lin, quad = directional_terms(model, ids, weights, dt)
        with _perturbed(weights, dt), torch.no_grad():
            measured = float(lm_loss(model.eval(), ids)) - loss0
        errs.append(abs(math.fsum(lin) + math.fsum(quad) - measured))
        assert abs(math.fsum(lin)) > 10 * errs[-1] or abs(math.fsum(quad)) > 10 * errs[-1]
    assert errs[1] < 0.2 * errs[0], errs


def test_radial_profile_restores_weights_and_matches_quadratic(case):
    model, ids, names, sizes, grad, hess = case
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prof = radial_profile(model, ids, radii=(0.0, 1e-3, 0.3), directions=2, seed=11)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    assert prof.losses[0][0] == prof.base_loss == prof.losses[1][0]
    # Direction 0 rebuilt by the public helper: each tensor's part has that tensor's norm.
    params = [p for _, p in model.named_parameters()]
    u = random_directions(params, seed=11)
    for ui, p in zip(u, params, strict=False):
        assert float(ui.norm()) == pytest.approx(float(p.detach().norm()), rel=1e-12)
    uf = torch.cat([x.reshape(-1) for x in u])
    r = 1e-3
    want = r * float(grad @ uf) + 0.5 * r * r * float(uf @ hess @ uf)
    got = prof.losses[0][1] - prof.base_loss
    assert got == pytest.approx(want, rel=1e-3)
    assert prof.losses[0][2] != prof.losses[1][2]  # two different directions
    assert len(prof.mean_dloss) == 3 and prof.mean_dloss[0] == 0.0


def test_sdpa_model_is_switched_to_eager_and_back():
    model = _llama(attn="sdpa")
    ids = _ids()
    assert model.config._attn_implementation == "sdpa"
    t_sdpa = hessian_trace(model, ids, samples=4, seed=3)
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    t_eager = hessian_trace(model, ids, samples=4, seed=3)
    assert t_sdpa.value == pytest.approx(t_eager.value, rel=1e-10)


def test_training_mode_restored():
    model = _llama()
    model.train()
    hessian_trace(model, _ids(), samples=2)
    assert model.training


class _NoDoubleBackward(torch.autograd.Function):
    """tanh whose backward is computed without a graph, like a fused kernel's."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.no_grad():
            return g * (1 - x.tanh() ** 2)


class _TinyLM(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 6)
        self.fc = torch.nn.Linear(6, 6)
        self.out = torch.nn.Linear(6, VOCAB)
        self.act = act

    def forward(self, ids):
        return self.out(self.act(self.fc(self.emb(ids))))


def test_plain_module_lm_and_clear_errors():
    torch.manual_seed(0)
    model = _TinyLM(torch.tanh).double()
    ids = _ids()
    names, sizes, flat, grad, hess = _exact_plain(model, ids)
    t = hessian_trace(model, ids, samples=64)
    assert torch.allclose(hess, hess.T, atol=1e-12)
    assert abs(t.value - float(torch.diagonal(hess).sum())) < 3 * t.stderr
    with pytest.raises(CurvatureError, match="no graph for a second derivative"):
        hessian_trace(_TinyLM(_NoDoubleBackward.apply).double(), ids, samples=2)
    with pytest.raises(CurvatureError, match="float32 or float64"):
        hessian_trace(_TinyLM(torch.tanh).to(torch.bfloat16), ids, samples=2)
    with pytest.raises(CurvatureError, match="Did you mean 'block'"):
        hessian_trace(model, ids, samples=2, group_by="blocks")
    with pytest.raises(CurvatureError, match="Did you mean 'power'"):
        hessian_top_eigenvalues(model, ids, method="powr")
    with pytest.raises(CurvatureError, match="Did you mean 'fc.weight'"):
        hessian_trace(model, ids, params=["fc.weigth"], samples=2)
    with pytest.raises(CurvatureError, match="samples"):
        hessian_trace(model, ids, samples=1)
    with pytest.raises(CurvatureError, match="seq_len >= 2"):
        hessian_trace(model, ids[:, :1], samples=2)
    with pytest.raises(CurvatureError, match="torch.long"):
        hessian_trace(model, ids.float(), samples=2)


def _exact_plain(model, ids):
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    names = [n for n, _ in named]
    sizes = [p.numel() for _, p in named]
    shapes = [p.shape for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def f(x):
        ps = {n: c.view(s) for n, c, s in zip(names, torch.split(x, sizes), shapes, strict=False)}
        logits = functional_call(model, ps, (ids,))
        return -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).mean()

    x = flat.clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x), x)
    return names, sizes, flat, grad, torch.autograd.functional.hessian(f, flat, vectorize=True)


def test_group_names():
    assert group_name("model.layers.3.mlp.up_proj.weight", "block") == "model.layers.3"
    assert group_name("model.layers.3.mlp.up_proj.weight", "layer") == "model.layers.3.mlp.up_proj"
    assert group_name("model.embed_tokens.weight", "block") == "model.embed_tokens"
    assert group_name("transformer.h.11.attn.c_attn.bias", "block") == "transformer.h.11"
    assert group_name("x.weight", "all") == "all"
    assert group_name("a.b", lambda n: n.upper()) == "A.B"
