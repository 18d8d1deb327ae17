"""Sensitivity profiles: one calibration pass that turns any format's weight error into predicted KL per layer.

For a model at the minimum of its own KL, the mean per-token KL between the float model and a copy with
weights W + dW is second order (the first-order term vanishes):

    KL ~ 1/(2N) * dW^T F dW,   F = sum_s E_{y_s ~ p(.|c_s)} [ grad log p(y_s|c_s) grad log p(y_s|c_s)^T ]

with N scored positions s. The profile estimates the **diagonal** of F for every linear weight from backward
passes with labels sampled from the model itself (the true Fisher, not the empirical one on corpus labels): for
each calibration sequence, sample y_s ~ p for every position, L = -sum_s log p(y_s), backpropagate, and add
(dL/dW)^2 (cross terms between positions vanish in expectation because the labels are sampled independently). Then
each layer's predicted contribution is

    kl_l = 1/(2N) * sum_ij F_ij dW_ij^2

and the model's prediction is the sum over layers (errors of different layers add almost independently: the
"linearity theorem" of HIGGS, Malinovskii et al. 2024). The diagonal ignores correlations between the errors of
one row's weights; rounding errors are nearly uncorrelated, so this holds on average, and the empirical
calibration in :mod:`qscale.laws.profile` absorbs what is left.

Storage: ``estimator="rank1"`` (default) keeps, per layer, the best non-negative rank-1 factorisation
F ~ r c^T (a row vector of the output dimension, a column vector of the input dimension; alternating least
squares, 8 sweeps) -- what llama.cpp's imatrix (input second moments) and an output-gradient second moment
would give, but fitted to the measured diagonal. A 135M model's profile is then 1.1 MB. ``estimator="full"``
keeps the whole diagonal in fp16 (2 bytes per weight), for small models and for checking the rank-1 form.

Worked numbers (SmolLM2-135M, 8 x 256 calibration tokens of the enwiki train split, 2-core CPU): 8 forward +
8 backward passes; see ``bench/profile.md`` for the measured seconds and the accuracy of both forms.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qscale.kernels import fake_quant
from qscale.lm.layers import linear_layers
from qscale.quantize.sqnr import db

PROFILE_VERSION = 1
ESTIMATORS = ("rank1", "full")


@dataclass
class LayerProfile:
    """The Fisher diagonal of one ``(out, in)`` weight: ``row`` x ``col`` (rank-1) or ``full``."""

    name: str
    shape: tuple[int, int]
    row: torch.Tensor | None = None  # (out,) fp32
    col: torch.Tensor | None = None  # (in,) fp32
    full: torch.Tensor | None = None  # (out, in) fp16
    total: float = 0.0  # sum of the measured diagonal (before factorising)
    rank1_fit: float = float("nan")  # 1 - ||F - r c^T||_F / ||F||_F

    def squared_sums(self, d2: torch.Tensor) -> tuple[float, float]:
        """``(sum_ij F_ij d2_ij, sum_ij d2_ij)`` of a squared ``(out, in)`` error, fp32 row sums summed in
        float64. The rank-1 form reads ``d2`` once: one product with the two columns ``[col, 1]``."""
        if self.full is not None:
            return (
                float((self.full.float() * d2).sum(-1).double().sum()),
                float(d2.sum(-1).double().sum()),
            )
        assert self.row is not None and self.col is not None
        rs = (
            d2 @ torch.stack([self.col.float(), torch.ones_like(self.col, dtype=torch.float32)], 1)
        ).double()
        return float(rs[:, 0] @ self.row.double()), float(rs[:, 1].sum())


@dataclass
class SensitivityProfile:
    """A model's per-layer Fisher diagonals, with how they were measured; see the module docstring."""

    model: str
    identity: str
    estimator: str
    n_tokens: int  # N: scored positions of the calibration pass
    settings: dict[str, Any]
    seconds: float
    passes: dict[str, int]
    layers: dict[str, LayerProfile] = field(default_factory=dict)
    #: the noise probe's measured level (:func:`qscale.measure.probe.noise_probe`, with its ``settings``), or None
    probe: dict[str, Any] | None = None

    @property
    def probe_factor(self) -> float | None:
        """Measured / raw KL of the noise probe (the model's own level), or None without a probe."""
        return None if self.probe is None else float(self.probe["factor"])

    # --- prediction -----------------------------------------------------------------------------------
    def layer_terms(
        self, model: Any, fmt: Any, *, weights: Callable[[Any], torch.Tensor] | None = None
    ) -> dict:
        """Predicted KL contribution (nats/token) of each profiled layer when RTN-quantized in ``fmt``.

        ``weights(ref)`` may supply the quantized ``(out, in)`` weight of a layer (e.g. from GPTQ); by default it
        is ``fake_quant(fmt, w)`` of the float weight. Returns ``{layer: {"kld", "rel_err", "sqnr_db", "numel"}}``.
        """
        out: dict[str, dict[str, float]] = {}
        refs = {r.name: r for r in linear_layers(model, exclude=self.settings.get("exclude"))}
        missing = [n for n in self.layers if n not in refs]
        if missing:
            raise ValueError(f"profile layers not in the model: {missing[:3]} (profile of {self.model!r})")
        for name, lp in self.layers.items():
            w = refs[name].get_weight().float()
            if tuple(w.shape) != tuple(lp.shape):
                raise ValueError(f"{name}: weight shape {tuple(w.shape)} != profile shape {lp.shape}")
            q = weights(refs[name]) if weights is not None else fake_quant(fmt, w)
            d2 = q.float()
            # fake_quant's fresh fp32 output is reused for the error in place (one buffer, no temporaries);
            # anything else (a caller's tensor, the input itself) is copied first
            fresh = weights is None and d2 is q and d2.data_ptr() != w.data_ptr() and d2.is_contiguous()
            d2 = d2.sub_(w) if fresh else d2 - w
            d2.square_()
            weighted, noise = lp.squared_sums(d2)
            sig = float(torch.linalg.vector_norm(w, dim=-1).double().square().sum())
            out[name] = {
                "kld": 0.5 * weighted / self.n_tokens,
                "rel_err": (noise / sig) ** 0.5 if sig > 0 else 0.0,
                "sqnr_db": db(sig, noise),
                "numel": int(w.numel()),
            }
        return out

    def predict_kld(self, model: Any, fmt: Any) -> float:
        """Raw (uncalibrated) predicted mean KL of the whole model: the sum of :meth:`layer_terms`."""
        return sum(t["kld"] for t in self.layer_terms(model, fmt).values())

    # --- storage --------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "model": self.model,
            "identity": self.identity,
            "estimator": self.estimator,
            "n_tokens": self.n_tokens,
            "settings": self.settings,
            "seconds": self.seconds,
            "passes": self.passes,
            "probe": self.probe,
            "layers": {
                n: {"shape": list(lp.shape), "total": lp.total, "rank1_fit": lp.rank1_fit}
                for n, lp in self.layers.items()
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (tensors + the JSON metadata in its header; no pickle)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for n, lp in self.layers.items():
            for kind in ("row", "col", "full"):
                t = getattr(lp, kind)
                if t is not None:
                    tensors[f"{n}/{kind}"] = t.contiguous()
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata={"qscale_profile": json.dumps(self.meta(), sort_keys=True)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SensitivityProfile:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if "qscale_profile" not in header:
                raise ValueError(f"{path} is not a qscale sensitivity profile (no qscale_profile metadata)")
            meta = json.loads(header["qscale_profile"])
            if meta.get("version") != PROFILE_VERSION:
                raise ValueError(
                    f"{path}: profile version {meta.get('version')} != {PROFILE_VERSION}; recompute it"
                )
            keys = set(f.keys())
            layers = {}
            for n, info in meta["layers"].items():

                def get(kind: str, n: str = n) -> torch.Tensor | None:
                    k = f"{n}/{kind}"
                    return f.get_tensor(k) if k in keys else None

                layers[n] = LayerProfile(
                    name=n,
                    shape=tuple(info["shape"]),
                    row=get("row"),
                    col=get("col"),
                    full=get("full"),
                    total=float(info["total"]),
                    rank1_fit=float(info["rank1_fit"]),
                )
        return cls(
            model=meta["model"],
            identity=meta["identity"],
            estimator=meta["estimator"],
            n_tokens=int(meta["n_tokens"]),
            settings=meta["settings"],
            seconds=float(meta["seconds"]),
            passes=meta["passes"],
            layers=layers,
            probe=meta.get("probe"),
        )


def rank1_nonneg(f: torch.Tensor, sweeps: int = 8) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-1 ``r c^T`` (both >= 0) to a non-negative matrix by alternating least squares; and its fit."""
    f64 = f.double()
    c = f64.mean(0).clamp_min(1e-300)
    r = torch.ones(f.shape[0], dtype=torch.float64)
    for _ in range(sweeps):
        r = (f64 @ c) / (c @ c)
        c = (f64.t() @ r) / (r @ r)
    resid = torch.linalg.norm(f64 - torch.outer(r, c)) / torch.linalg.norm(f64).clamp_min(1e-300)
    return r.float(), c.float(), float(1.0 - resid)


def profile_settings_key(settings: dict[str, Any]) -> str:
    """A short hash of the settings that change a profile (calibration, estimator, label draws, seed)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def compute_profile(
    lm: Any,
    calib: torch.Tensor,
    *,
    estimator: str = "rank1",
    label_draws: int = 1,
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SensitivityProfile:
    """Measure the Fisher diagonal of every linear layer of ``lm`` (a :class:`qscale.lm.LoadedModel`).

    ``calib``: ``(n, L)`` token ids (e.g. :func:`qscale.corpora.calibration_batch`), one backward pass per row
    and label draw. Runs in the model's dtype (fp32 recommended); parameters' ``requires_grad`` is restored.
    """
    if estimator not in ESTIMATORS:
        from qscale.registry import unknown_name_message

        raise ValueError(unknown_name_message(estimator, ESTIMATORS, "profile estimator"))
    if label_draws < 1:
        raise ValueError(f"label_draws must be >= 1, got {label_draws}")
    model = lm.model
    refs = linear_layers(model, include=include, exclude=exclude)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    dev = next(iter(params)).device
    acc = {r.name: torch.zeros(r.out_features, r.in_features, dtype=torch.float32, device=dev) for r in refs}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    n_tokens = 0
    n_fwd = n_bwd = 0
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(False)
        for r in refs:
            r.weight.requires_grad_(True)
        for i in range(calib.shape[0]):
            ids = calib[i : i + 1].to(dev)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()  # (L, V)
            n_fwd += 1
            logp = logits.log_softmax(-1)
            probs = logp.detach().exp().cpu()
            for d in range(label_draws):
                labels = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(dev)
                loss = -logp.gather(1, labels[:, None]).sum()
                for r in refs:
                    r.weight.grad = None
                loss.backward(retain_graph=d < label_draws - 1)
                n_bwd += 1
                for r in refs:
                    g = r.weight.grad
                    g = g.t() if r.transposed else g
                    acc[r.name].addcmul_(g, g)
            n_tokens += int(ids.shape[1])
            if progress is not None:
                progress(i + 1, int(calib.shape[0]))
    finally:
        for r in refs:
            r.weight.grad = None
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    # Each label draw is one sample of the Fisher: average the draws.
    layers: dict[str, LayerProfile] = {}
    for r in refs:
        f = (acc.pop(r.name) / label_draws).cpu()
        total = float(f.double().sum())
        lp = LayerProfile(name=r.name, shape=(r.out_features, r.in_features), total=total)
        row, col, fit = rank1_nonneg(f)
        lp.rank1_fit = fit
        if estimator == "rank1":
            lp.row, lp.col = row, col
        else:
            lp.full = f.to(torch.float16) if float(f.max()) < 6e4 else f
        layers[r.name] = lp
    seconds = time.perf_counter() - t0
    full_settings = {
        "n_samples": int(calib.shape[0]),
        "seq_len": int(calib.shape[1]),
        "label_draws": label_draws,
        "seed": seed,
        "estimator": estimator,
        "include": list(include) if include is not None else None,
        "exclude": list(exclude) if exclude is not None else None,
        **(settings or {}),
    }
    return SensitivityProfile(
        model=lm.name,
        identity=lm.facts.identity,
        estimator=estimator,
        n_tokens=n_tokens,
        settings=full_settings,
        seconds=round(seconds, 2),
        passes={"forward": n_fwd, "backward": n_bwd},
        layers=layers,
    )


def default_profile_dir() -> Path:
    """``$QSCALE_PROFILE_DIR`` if set, else ``~/.cache/qscale/profiles``."""
    import os

    env = os.environ.get("QSCALE_PROFILE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qscale" / "profiles"


#: Row length of the default calibration: the real panel's eval windows (``data/sweeps/panel_rtn.yaml``), so
#: the profile sees token positions in the proportions the measured KL it is calibrated on averages over. The
#: Fisher mass per token falls with the position (short contexts are uncertain; a model without BOS, such as
#: Qwen2.5, has its attention sink in every row's first token): on Qwen2.5-Coder-0.5B rows of 256 put the raw
#: prediction at 1.0-2.4x the measured KL of 512-token windows, rows of 512 at 0.4-0.8x (bench/profile.md).
CALIBRATION_ROW = 512
CALIBRATION_TOKENS = 2048
#: The default calibration corpus (its train split); the profile law is calibrated on KL measured on its test split.
CALIBRATION_CORPUS = "enwiki_gensim"


def default_calibration(lm: Any) -> dict[str, Any]:
    """The default calibration of a profile: 2,048 tokens of the enwiki train split, in rows of
    min(512, the model's context) tokens (real models: 4 x 512; zoo models: 32 x 64)."""
    ctx = getattr(lm.model.config, "max_position_embeddings", None) or getattr(
        lm.model.config, "n_positions", CALIBRATION_ROW
    )
    seq_len = int(min(CALIBRATION_ROW, ctx))
    return {
        "corpus": CALIBRATION_CORPUS,
        "n_samples": CALIBRATION_TOKENS // seq_len,
        "seq_len": seq_len,
        "seed": 0,
    }


def profile_path(
    lm: Any,
    *,
    calibration: dict[str, Any] | None = None,
    estimator: str = "rank1",
    label_draws: int = 1,
    cache_dir: str | Path | None = None,
) -> tuple[Path, dict[str, Any], str]:
    """Where :func:`cached_profile` keeps ``lm``'s profile for these settings: ``(path, settings, key)``; the
    key hashes the weights' identity and every setting that changes the profile."""
    from qscale.corpora.windows import model_adds_bos

    cal = calibration or default_calibration(lm)
    settings = {"calibration": cal, "estimator": estimator, "label_draws": label_draws}
    # rows without BOS get a key of their own (the profiles of before had BOS)
    if not model_adds_bos(lm.tokenizer):
        settings["bos"] = False
    key = profile_settings_key({"identity": lm.facts.identity, **settings})
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in lm.facts.identity)[:60]
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_profile_dir()
    return path / f"{safe}-{key}.safetensors", settings, key


def cached_profile(
    lm: Any,
    *,
    calibration: dict[str, Any] | None = None,
    estimator: str = "rank1",
    label_draws: int = 1,
    cache_dir: str | Path | None = None,
    recompute: bool = False,
    progress: Callable[[int, int], None] | None = None,
    probe: bool = True,
) -> tuple[SensitivityProfile, Path, bool]:
    """The model's profile from the cache (keyed by weights identity + settings), computed and saved if absent.

    With ``probe`` (default) the profile carries the noise probe's measured level (:mod:`qscale.measure.probe`,
    default settings): a cached profile without it, or with a probe of other settings, gets one measured and is
    saved again (the Fisher diagonal itself is not recomputed). Returns ``(profile, path, computed)``; ``computed``
    is True when the Fisher pass or the probe ran.
    """
    from qscale.corpora.calibration import calibration_from_record

    path, settings, _ = profile_path(
        lm, calibration=calibration, estimator=estimator, label_draws=label_draws, cache_dir=cache_dir
    )
    cal = settings["calibration"]
    prof = None
    computed = False
    if path.is_file() and not recompute:
        prof = SensitivityProfile.load(path)
        if prof.identity != lm.facts.identity:
            prof = None
    if prof is None:
        calib = calibration_from_record(lm.tokenizer, cal)
        prof = compute_profile(
            lm,
            calib,
            estimator=estimator,
            label_draws=label_draws,
            settings={k: v for k, v in settings.items() if k in ("calibration", "bos")},
            progress=progress,
        )
        computed = True
    if probe:
        from qscale.measure.probe import default_probe_settings, measure_probe

        want = default_probe_settings(lm)
        if prof.probe is None or prof.probe.get("settings") != want:
            prof.probe = measure_probe(lm, prof, want)
            computed = True
    if computed:
        prof.save(path)
    return prof, path, computed


__all__ = [
    "CALIBRATION_CORPUS",
    "CALIBRATION_ROW",
    "CALIBRATION_TOKENS",
    "ESTIMATORS",
    "cached_profile",
    "default_calibration",
    "default_profile_dir",
    "LayerProfile",
    "PROFILE_VERSION",
    "SensitivityProfile",
    "compute_profile",
    "profile_path",
    "profile_settings_key",
    "rank1_nonneg",
]
