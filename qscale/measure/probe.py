"""The noise probe: one measured perturbation that tells a model's own measured / raw factor.

The sensitivity profile (:mod:`qscale.measure.sensitivity`) predicts ``raw = 1/(2N) sum F_ij dW_ij^2``. Its
ranking of formats is good, but its level is not: measured / raw differs per model (the draw of 2,048
calibration tokens moves it by up to 1.6x on Qwen2.5-Coder-0.5B, and the diagonal Fisher misses what errors within
a row do together). A cross-model constant cannot know a new model's factor. The probe measures it:

1. perturb every profiled weight by ``dW = eps * rms_row(W) * z`` with ``z ~ N(0, 1)`` (seeded), i.e. each row gets
   noise of the same relative size, the way a per-row or per-group quantizer's error scales;
2. choose ``eps`` so that the profile's raw prediction of that perturbation is ``target`` nats/token (it is
   quadratic in ``eps``: ``eps = sqrt(target / raw(1))``);
3. measure the exact KL of the perturbed model against the float model on ``probe_windows`` (rows of the
   calibration corpus' train split, drawn with another seed than the profile's rows);
4. ``factor = measured / raw``. A probe calibration (:class:`qscale.laws.profile.ProfileCalibration` with
   ``probe=True``) reads ``factor * raw(format)`` instead of ``raw(format)``.

Cost: two forward passes over the probe tokens (float reference and perturbed), no backward pass, no
quantization. Measured (SmolLM2-135M, default settings: 8 x 512 tokens, target 0.05): raw(1) = 31.4, so
eps = sqrt(0.05 / 31.4) = 0.0399 (a relative weight error of 4.0%, a weight SQNR of 28 dB: between SmolLM2's 5- and 6-bit formats);
measured KL 0.0684, factor 1.367. What the factor captures and what it does not (the per-format error structure
on Qwen2.5-Coder-0.5B) is in ``bench/profile.md``, "The noise probe".
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from qscale.lm.layers import linear_layers

#: Tokens of the default probe: 8 rows x 512 (rows of the calibration's length) of the calibration corpus' train
#: split, drawn with another seed than the profile's calibration rows (seed 0).
PROBE_TOKENS = 4096
PROBE_ROWS = 8
PROBE_ROW_SEED = 1
PROBE_TARGET = 0.05


def rows_windows(ids: Any, *, corpus: str = "custom", split: str = "", tokenizer_id: str = "") -> Any:
    """:class:`qscale.corpora.windows.EvalWindows` of the ``(n, L)`` token rows ``ids``: every token but each row's
    first is scored (no byte counts, so bpb is undefined on them)."""
    from qscale.corpora.windows import EvalWindows

    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    return EvalWindows(
        input_ids=ids,
        score_mask=mask,
        token_bytes=torch.zeros_like(ids),
        positions=torch.arange(ids.numel(), dtype=torch.long).view_as(ids),
        n_scored=int(mask.sum()),
        n_bytes=0,
        protocol="rows",
        seq_len=int(ids.shape[1]),
        stride=None,
        bos=False,
        corpus=corpus,
        split=split,
        tokenizer_id=tokenizer_id,
    )


def probe_windows(
    tokenizer: Any,
    n_rows: int = PROBE_ROWS,
    *,
    seq_len: int = 512,
    seed: int = PROBE_ROW_SEED,
    corpus: str | None = None,
) -> Any:
    """:func:`rows_windows` of ``n_rows`` random rows of the calibration corpus' train split
    (:func:`qscale.corpora.calibration_batch` with ``seed``)."""
    from qscale.corpora import calibration_batch
    from qscale.corpora.windows import tokenizer_identity
    from qscale.measure.sensitivity import CALIBRATION_CORPUS

    corpus = corpus or CALIBRATION_CORPUS
    ids = calibration_batch(tokenizer, corpus, n_rows, seq_len, seed)
    return rows_windows(
        ids, corpus=corpus, split=f"train/rows-seed{seed}", tokenizer_id=tokenizer_identity(tokenizer)
    )


def default_probe_settings(lm: Any) -> dict[str, Any]:
    """The probe a profile gets by default: :data:`PROBE_TOKENS` tokens in rows of the default calibration's
    length (real models 8 x 512, zoo models 64 x 64), row seed :data:`PROBE_ROW_SEED`, raw size
    :data:`PROBE_TARGET`, noise seed 0."""
    from qscale.measure.sensitivity import CALIBRATION_CORPUS, default_calibration

    seq_len = int(default_calibration(lm)["seq_len"])
    return {
        "corpus": CALIBRATION_CORPUS,
        "n_rows": max(1, PROBE_TOKENS // seq_len),
        "seq_len": seq_len,
        "seed": PROBE_ROW_SEED,
        "target": PROBE_TARGET,
        "noise_seed": 0,
    }


def measure_probe(lm: Any, profile: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`noise_probe` with ``settings`` (those of :func:`default_probe_settings`); the result carries them."""
    win = probe_windows(
        lm.tokenizer,
        int(settings["n_rows"]),
        seq_len=int(settings["seq_len"]),
        seed=int(settings["seed"]),
        corpus=settings["corpus"],
    )
    res = noise_probe(lm, profile, win, target=float(settings["target"]), seed=int(settings["noise_seed"]))
    return {"settings": dict(settings), **res}


def _noise(w: torch.Tensor, seed: int) -> torch.Tensor:
    """``rms_row(w) * z`` (fp32, ``w``'s shape), ``z`` standard normal from ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(w.shape, generator=gen, dtype=torch.float32)
    rms = w.float().cpu().square().mean(-1, keepdim=True).sqrt_()
    return z.mul_(rms)


def noise_probe(
    lm: Any,
    profile: Any,
    windows: Any,
    *,
    target: float = PROBE_TARGET,
    seed: int = 0,
    batch_size: int = 4,
    reference: Any = None,
) -> dict[str, Any]:
    """Measure ``profile``'s level on ``lm`` (module docstring): ``{"raw", "measured", "factor", "eps",
    "rel_err", "tokens", "seconds", "passes"}``. The model's weights are restored bit for bit. ``reference``: the
    float model's exact :func:`qscale.measure.eval.reference_outputs` on ``windows``, if already made (it is
    made here otherwise: one of the two forward passes)."""
    from qscale.measure.eval import evaluate_windows, reference_outputs

    if not target > 0:
        raise ValueError(f"probe target must be > 0 nats/token, got {target}")
    t0 = time.perf_counter()
    model = lm.model
    refs = {r.name: r for r in linear_layers(model, exclude=profile.settings.get("exclude"))}
    names = [n for n in profile.layers if n in refs]
    if len(names) != len(profile.layers):
        missing = sorted(set(profile.layers) - set(names))
        raise ValueError(f"profile layers not in the model: {missing[:3]} (profile of {profile.model!r})")
    raw1 = 0.0
    sig = err = 0.0
    for i, n in enumerate(names):
        w = refs[n].get_weight()
        d = _noise(w, seed + i)
        weighted, noise = profile.layers[n].squared_sums(d.square())
        raw1 += 0.5 * weighted / profile.n_tokens
        err += noise
        sig += float(w.float().square().sum(dtype=torch.float64))
    if not raw1 > 0:
        raise ValueError("the profile gives the noise perturbation no weight (raw prediction 0)")
    eps = math.sqrt(target / raw1)
    n_fwd = int(windows.input_ids.shape[0])
    ref = reference
    if ref is None:
        ref = reference_outputs(model, windows, top_k=None, batch_size=batch_size, progress=False)
        n_fwd *= 2
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for i, n in enumerate(names):
                w = refs[n].get_weight()
                saved[n] = w.detach().clone()
                d = _noise(w, seed + i).mul_(eps).to(w.device)
                refs[n].set_weight(w.float() + d)
        res = evaluate_windows(model, windows, reference=ref, batch_size=batch_size, progress=False)
    finally:
        for n, w in saved.items():
            refs[n].set_weight(w)
    measured = float(res["kld"])
    return {
        "raw": target,
        "measured": measured,
        "factor": measured / target,
        "eps": eps,
        "rel_err": eps * math.sqrt(err / sig) if sig > 0 else float("nan"),
        "tokens": int(windows.n_scored),
        "seconds": round(time.perf_counter() - t0, 2),
        "passes": {"forward": n_fwd},
    }


__all__ = [
    "PROBE_ROWS",
    "PROBE_ROW_SEED",
    "PROBE_TARGET",
    "PROBE_TOKENS",
    "default_probe_settings",
    "measure_probe",
    "noise_probe",
    "probe_windows",
    "rows_windows",
]
