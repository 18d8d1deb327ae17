"""Optional cross-check against PyPI ``pyhessian`` 0.1 (skipped when it is not installed; not a dependency).

Its ``hessian`` class wants ``criterion(model(inputs), targets)`` on plain tensors, so a thin adapter maps a
transformers LM to flattened next-token logits; ``cuda=False`` overrides its CUDA default; the model is
float32 because its random vectors come from ``torch.randn`` in the default dtype. ``density()`` is not
exercised: it calls ``torch.eig``, which torch removed.
"""

from __future__ import annotations

import math

import pytest
import torch

pyhessian = pytest.importorskip("pyhessian")

from qscale.measure.landscape import hessian_top_eigenvalues, hessian_trace  # noqa: E402

VOCAB = 32


class _NextTokenLogits(torch.nn.Module):
    """(B, L) ids -> (B*(L-1), V) logits of the next token: what pyhessian's criterion can take."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.lm(ids, use_cache=False).logits
        return logits[:, :-1].reshape(-1, logits.shape[-1])


def _model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def test_pyhessian_agrees_on_top_eigenvalue_and_trace():
    model = _model()
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    adapter = _NextTokenLogits(model)
    torch.manual_seed(0)  # pyhessian draws from the global RNG
    ph = pyhessian.hessian(
        adapter, torch.nn.CrossEntropyLoss(), data=(ids, ids[:, 1:].reshape(-1)), cuda=False
    )
    ph_eig, _ = ph.eigenvalues(maxIter=500, tol=1e-7, top_n=1)
    # Its stopping rule divides the running-mean change by (trace + 1e-6): with a negative trace the ratio is
    # negative and it stops after two samples even at tol=0. One sample per call sidesteps the rule.
    early = ph.trace(maxIter=64, tol=0.0)
    ph_vhv = [ph.trace(maxIter=1)[0] for _ in range(64)]
    model.zero_grad(set_to_none=True)  # pyhessian leaves graph-holding .grad tensors behind

    ours_eig = hessian_top_eigenvalues(model, ids, k=1, iters=500, tol=1e-7, method="power")
    assert ph_eig[0] == pytest.approx(ours_eig.values[0], rel=0.01)
    assert len(ph_vhv) == 64
    ph_mean = sum(ph_vhv) / len(ph_vhv)
    ph_se = math.sqrt(sum((x - ph_mean) ** 2 for x in ph_vhv) / (len(ph_vhv) - 1) / len(ph_vhv))
    ours = hessian_trace(model, ids, samples=64, seed=0)
    assert abs(ph_mean - ours.value) < 3 * math.hypot(ph_se, ours.stderr), (ph_mean, ours.value)
    assert ours.value < 0 and len(early) == 2  # the documented stopping-rule flaw, on this model
