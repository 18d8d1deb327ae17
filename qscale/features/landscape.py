"""Curvature and outlier features for the law tables, registered with :mod:`qscale.features`.

All use one small calibration batch (``landscape_batch``): the first ``n_seqs`` rows and ``seq_len`` columns of
the sweep's calibration batch ``ctx.calib`` when there is one, else ``calibration_batch(tokenizer, corpus,
n_seqs, seq_len, seed)``; ``seq_len`` is capped at the model's position limit. The defaults
(:class:`LandscapeSettings`: 2 x 128 tokens, 8 Hutchinson samples, 20 Lanczos steps) keep a tiny zoo model's
features to seconds on a CPU; a sweep overrides them by putting a ``LandscapeSettings`` in
``ctx.cache["landscape_settings"]``. The settings used are recorded as the ``landscape_settings_*`` columns.

==================  ============  ======  ==================================================================
feature             level         cost    value
==================  ============  ======  ==================================================================
hessian_trace       model         hvp     Hutchinson tr H of the mean next-token loss over all parameters
hessian_trace_se    model         hvp     its standard error
trace_per_param     model         hvp     tr H / n_params (mean diagonal curvature)
trace_linear        model         hvp     trace of the quantized linear weights' diagonal block (same samples)
trace_linear_pp     model         hvp     trace_linear / number of quantized linear weights
top_eig             model         hvp     largest Hessian eigenvalue (Lanczos)
act_outliers        model         eval    activation outlier aggregates (``act_outliers_kurtosis_max`` ...)
landscape_settings  model         free    the batch and sample counts the hvp features used
qdir_linear         model_format  hvp     g.D, D = Q(W) - W over all quantized linear weights
qdir_quadratic      model_format  hvp     1/2 D^T H D (exact HVP along D)
qdir_pred_dloss     model_format  hvp     qdir_linear + qdir_quadratic, the 2nd-order loss-change prediction
==================  ============  ======  ==================================================================

All depend on the calibration batch and the landscape settings (``settings=("calibration", "landscape")``;
``landscape_settings`` on the latter only). Weight kurtosis / max-over-std / share beyond 6 std are the built-in
``weight_stats`` feature (cost "weights") of :mod:`qscale.features.builtin`; they are not registered twice here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qscale.features.core import FeatureContext, register_feature

__all__ = ["LandscapeSettings", "landscape_batch"]


@dataclass(frozen=True)
class LandscapeSettings:
    """Batch and sample sizes of the curvature features (kept small: CPU demo on tiny models)."""

    n_seqs: int = 2  # calibration sequences
    seq_len: int = 128  # tokens per sequence (capped at the model's position limit)
    trace_samples: int = 8  # Hutchinson Rademacher samples
    eig_iters: int = 20  # Lanczos steps for the top eigenvalue
    eig_tol: float = 1e-3  # relative residual stopping rule
    corpus: str = "enwiki_gensim"  # used only when the context has no calibration batch
    seed: int = 0


def _settings(ctx: FeatureContext) -> LandscapeSettings:
    s = ctx.cache.get("landscape_settings")
    if s is None:
        return LandscapeSettings()
    if not isinstance(s, LandscapeSettings):
        raise TypeError(
            f"ctx.cache['landscape_settings'] must be a LandscapeSettings, got {type(s).__name__}"
        )
    return s


def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 1:
            return v
    return None


def landscape_batch(ctx: FeatureContext) -> Any:
    """The (n_seqs, seq_len) LongTensor the curvature features use (cached per model in ``ctx.cache``)."""
    if "landscape_batch" in ctx.cache:
        return ctx.cache["landscape_batch"]
    s = _settings(ctx)
    seq_len = s.seq_len
    limit = _max_positions(ctx.model)
    if limit is not None:
        seq_len = min(seq_len, limit)
    if ctx.calib is not None:
        batch = ctx.calib[: s.n_seqs, :seq_len]
    else:
        from qscale.corpora import calibration_batch

        batch = calibration_batch(ctx.tokenizer, s.corpus, n_samples=s.n_seqs, seq_len=seq_len, seed=s.seed)
    ctx.cache["landscape_batch"] = batch
    return batch


def _trace(ctx: FeatureContext) -> Any:
    if "landscape:trace" not in ctx.cache:
        from qscale.measure.landscape import hessian_trace

        s = _settings(ctx)
        ctx.cache["landscape:trace"] = hessian_trace(
            ctx.model, landscape_batch(ctx), samples=s.trace_samples, seed=s.seed
        )
    return ctx.cache["landscape:trace"]


def _qdir(ctx: FeatureContext) -> Any:
    key = f"landscape:qdir:{ctx.fmt}"
    if key not in ctx.cache:
        from qscale.measure.landscape import quant_direction_terms

        ctx.cache[key] = quant_direction_terms(ctx.model, landscape_batch(ctx), ctx.fmt)
    return ctx.cache[key]


@register_feature(
    "hessian_trace",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="log",
    settings=("calibration", "landscape"),
)
def _hessian_trace(ctx: FeatureContext) -> float:
    """Hutchinson estimate of the trace of the loss Hessian over all trainable parameters."""
    return float(_trace(ctx).value)


@register_feature(
    "hessian_trace_se",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
)
def _hessian_trace_se(ctx: FeatureContext) -> float:
    """Standard error of the Hutchinson trace estimate."""
    return float(_trace(ctx).stderr)


@register_feature(
    "trace_per_param",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="log",
    settings=("calibration", "landscape"),
    flex=1,
)
def _trace_per_param(ctx: FeatureContext) -> float:
    """Hessian trace divided by the number of parameters (mean diagonal curvature)."""
    return float(_trace(ctx).per_param)


def _linear_trace(ctx: FeatureContext) -> Any:
    """The GroupTrace of the quantized linear weights (``qscale.lm.linear_layers``), from the same samples."""
    from qscale.lm.layers import linear_layers

    t = _trace(ctx)
    named = {id(p): n for n, p in ctx.model.named_parameters()}
    linear = {named[id(ref.weight)] for ref in linear_layers(ctx.model) if id(ref.weight) in named}
    groups = t.groups(lambda n: "linear" if n in linear else "other")
    if "linear" not in groups:
        raise ValueError("the model has no quantizable linear weight among its trainable parameters")
    return groups["linear"]


@register_feature(
    "trace_linear",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
)
def _trace_linear(ctx: FeatureContext) -> float:
    """Hutchinson trace of the Hessian block of the quantized linear weights (what quantization perturbs)."""
    return float(_linear_trace(ctx).value)


@register_feature(
    "trace_linear_pp",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
)
def _trace_linear_pp(ctx: FeatureContext) -> float:
    """Trace of the linear weights' Hessian block per linear weight."""
    return float(_linear_trace(ctx).per_param)


@register_feature(
    "top_eig",
    level="model",
    unit="nats/token/param^2",
    cost="hvp",
    transform="log",
    settings=("calibration", "landscape"),
    flex=2,
)
def _top_eig(ctx: FeatureContext) -> float:
    """Largest eigenvalue of the loss Hessian (Lanczos, few steps)."""
    from qscale.measure.landscape import hessian_top_eigenvalues

    s = _settings(ctx)
    e = hessian_top_eigenvalues(
        ctx.model, landscape_batch(ctx), k=1, iters=s.eig_iters, tol=s.eig_tol, seed=s.seed
    )
    return float(e.values[0])


@register_feature(
    "act_outliers",
    level="model",
    unit="1",
    cost="eval",
    transform="none",
    settings=("calibration", "landscape"),
    columns={
        "max_over_median_max": {
            "description": "max over layers of a channel's absmax over the median channel's"
        },
        "max_over_median_mean": {"description": "its mean over layers"},
        "kurtosis_max": {"description": "max over layers of the activation kurtosis"},
        "kurtosis_mean": {"description": "its mean over layers"},
        "n_outlier_features": {
            "unit": "count",
            "description": "input features beyond the LLM.int8 threshold 6",
        },
        "outlier_feature_frac": {"unit": "fraction", "description": "their share of all input features"},
        "frac_layers_with_outliers": {"unit": "fraction", "description": "share of layers with an outlier"},
        "absmax": {"unit": "activation units", "description": "largest absolute activation"},
    },
)
def _act_outliers(ctx: FeatureContext) -> dict[str, float]:
    """Activation outlier aggregates over linear-layer inputs (max/median, kurtosis, LLM.int8 >6 features)."""
    from qscale.measure.outliers import activation_stats

    return activation_stats(ctx.model, landscape_batch(ctx)).summary()


@register_feature(
    "landscape_settings",
    level="model",
    unit="count",
    cost="free",
    transform="none",
    settings=("landscape",),
    columns={
        "n_seqs": {"description": "calibration sequences of the curvature features"},
        "seq_len": {"unit": "tokens", "description": "tokens per sequence (capped at the model's positions)"},
        "trace_samples": {"description": "Hutchinson samples"},
        "eig_iters": {"description": "Lanczos steps"},
        "eig_tol": {"unit": "1", "description": "Lanczos relative residual stopping rule"},
        "seed": {"unit": "1", "description": "random seed"},
    },
)
def _landscape_settings(ctx: FeatureContext) -> dict[str, float]:
    """The calibration batch shape and sample counts the curvature features use."""
    s = _settings(ctx)
    out = {k: float(v) for k, v in asdict(s).items() if isinstance(v, int | float)}
    limit = _max_positions(ctx.model)
    out["seq_len"] = float(min(s.seq_len, limit) if limit is not None else s.seq_len)
    if ctx.calib is not None:
        out["n_seqs"] = float(min(s.n_seqs, ctx.calib.shape[0]))
        out["seq_len"] = float(min(out["seq_len"], ctx.calib.shape[1]))
    return out


@register_feature(
    "qdir_linear",
    level="model_format",
    unit="nats/token",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
)
def _qdir_linear(ctx: FeatureContext) -> float:
    """First-order term g.D of the loss change along the format's quantization direction D = Q(W) - W."""
    return float(_qdir(ctx).linear)


@register_feature(
    "qdir_quadratic",
    level="model_format",
    unit="nats/token",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
)
def _qdir_quadratic(ctx: FeatureContext) -> float:
    """Quadratic term 1/2 D^T H D along the quantization direction (exact HVP)."""
    return float(_qdir(ctx).quadratic)


@register_feature(
    "qdir_pred_dloss",
    level="model_format",
    unit="nats/token",
    cost="hvp",
    transform="none",
    settings=("calibration", "landscape"),
    flex=3,
)
def _qdir_pred(ctx: FeatureContext) -> float:
    """Second-order prediction g.D + 1/2 D^T H D of the loss change when the weights are quantized."""
    return float(_qdir(ctx).predicted_dloss)
