"""Outlier features: statistics of the inputs of every linear layer on calibration tokens, and of the weights.

Activation statistics (:func:`activation_stats`) come from forward pre-hooks on the linear layers selected by
``qscale.lm.linear_layers`` (nn.Linear and transformers Conv1D, head excluded by default), accumulated over
all tokens of the calibration batch (float64 accumulators, so chunked and whole-batch runs agree):

- ``channel_absmax[c]`` = max over tokens of |x[t, c]| for each input feature dimension c;
- ``max_over_median`` = max_c channel_absmax / median_c channel_absmax (median = mean of the two middle
  values for an even count). Worked numbers: channel absmaxes (1, 2, 3, 40) -> median 2.5, ratio 16.0;
- ``kurtosis``: excess kurtosis of all entries x[t, c] together, E[(x-mu)^4]/var^2 - 3 (0 for a Gaussian;
  a few huge channels make it large);
- ``n_outlier_features``: the LLM.int8() criterion (Dettmers et al. 2022), the number of feature dimensions in
  which at least one token has |x| > ``threshold`` (6 by default), i.e. channel_absmax > 6; ``outlier_dims``
  lists them.

Model-wide aggregates: ``max_over_median_max`` / ``_mean``, ``kurtosis_max`` / ``_mean``,
``n_outlier_features`` (sum over layers), ``outlier_feature_frac`` (that sum over the sum of input widths),
``frac_layers_with_outliers`` and ``absmax`` (largest |x| anywhere).

Weight statistics (kurtosis, max/std, share beyond 6 std per layer) are :func:`qscale.measure.weights.weight_stats`
and :func:`qscale.measure.weights.model_weight_stats`; :func:`outlier_report` puts both side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ActivationStats", "LayerActivationStats", "activation_stats", "outlier_report"]

LLM_INT8_THRESHOLD = 6.0


@dataclass(frozen=True)
class LayerActivationStats:
    """Input statistics of one linear layer over all calibration tokens (see the module docstring)."""

    name: str
    n_channels: int
    n_tokens: int
    absmax: float
    max_over_median: float
    kurtosis: float
    n_outlier_features: int
    outlier_dims: tuple[int, ...]
    channel_absmax: tuple[float, ...]

    def to_dict(self, channels: bool = False) -> dict[str, Any]:
        d = {
            "n_channels": self.n_channels,
            "n_tokens": self.n_tokens,
            "absmax": self.absmax,
            "max_over_median": self.max_over_median,
            "kurtosis": self.kurtosis,
            "n_outlier_features": self.n_outlier_features,
            "outlier_dims": list(self.outlier_dims),
        }
        if channels:
            d["channel_absmax"] = list(self.channel_absmax)
        return d


@dataclass(frozen=True)
class ActivationStats:
    """Per-layer :class:`LayerActivationStats` and model-wide aggregates."""

    layers: dict[str, LayerActivationStats]
    threshold: float
    n_tokens: int

    def _vals(self, key: str) -> list[float]:
        return [v for v in (getattr(s, key) for s in self.layers.values()) if math.isfinite(v)]

    @property
    def max_over_median_max(self) -> float:
        v = self._vals("max_over_median")
        return max(v) if v else math.nan

    @property
    def max_over_median_mean(self) -> float:
        v = self._vals("max_over_median")
        return math.fsum(v) / len(v) if v else math.nan

    @property
    def kurtosis_max(self) -> float:
        v = self._vals("kurtosis")
        return max(v) if v else math.nan

    @property
    def kurtosis_mean(self) -> float:
        v = self._vals("kurtosis")
        return math.fsum(v) / len(v) if v else math.nan

    @property
    def n_outlier_features(self) -> int:
        return sum(s.n_outlier_features for s in self.layers.values())

    @property
    def outlier_feature_frac(self) -> float:
        total = sum(s.n_channels for s in self.layers.values())
        return self.n_outlier_features / total if total else math.nan

    @property
    def frac_layers_with_outliers(self) -> float:
        n = len(self.layers)
        return sum(s.n_outlier_features > 0 for s in self.layers.values()) / n if n else math.nan

    @property
    def absmax(self) -> float:
        v = self._vals("absmax")
        return max(v) if v else math.nan

    def summary(self) -> dict[str, float]:
        """The model-wide aggregates as a flat dict of floats (feature columns)."""
        return {
            "max_over_median_max": self.max_over_median_max,
            "max_over_median_mean": self.max_over_median_mean,
            "kurtosis_max": self.kurtosis_max,
            "kurtosis_mean": self.kurtosis_mean,
            "n_outlier_features": float(self.n_outlier_features),
            "outlier_feature_frac": self.outlier_feature_frac,
            "frac_layers_with_outliers": self.frac_layers_with_outliers,
            "absmax": self.absmax,
        }

    def to_dict(self, channels: bool = False) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "n_tokens": self.n_tokens,
            **self.summary(),
            "layers": {n: s.to_dict(channels) for n, s in self.layers.items()},
        }


class _Accumulator:
    """Running per-channel absmax and shifted power sums (float64) of one layer's inputs."""

    def __init__(self) -> None:
        self.absmax: torch.Tensor | None = None
        self.shift: float | None = None
        self.n = 0
        self.s = [0.0, 0.0, 0.0, 0.0]  # sums of (x - shift)^k, k = 1..4

    def add(self, x: torch.Tensor) -> None:
        import torch

        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if x.numel() == 0:
            return
        am = x.abs().amax(dim=0).cpu()
        self.absmax = am if self.absmax is None else torch.maximum(self.absmax, am)
        if self.shift is None:
            self.shift = float(x.mean())
        c = x - self.shift
        c2 = c * c
        self.s[0] += float(c.sum())
        self.s[1] += float(c2.sum())
        self.s[2] += float((c2 * c).sum())
        self.s[3] += float((c2 * c2).sum())
        self.n += x.numel()

    def kurtosis(self) -> float:
        n = self.n
        if n == 0:
            return math.nan
        m1, m2r, m3r, m4r = (s / n for s in self.s)  # raw moments of c = x - shift
        var = m2r - m1 * m1
        if var <= 0:
            return math.nan
        m4 = m4r - 4 * m1 * m3r + 6 * m1 * m1 * m2r - 3 * m1**4
        return m4 / (var * var) - 3.0


def _median(x: torch.Tensor) -> float:
    s = x.sort().values
    n = s.numel()
    mid = n // 2
    return float(s[mid]) if n % 2 else 0.5 * (float(s[mid - 1]) + float(s[mid]))


def _ratio(a: float, b: float) -> float:
    if b == 0.0:
        return math.nan if a == 0.0 else math.inf
    return a / b


def activation_stats(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    threshold: float = LLM_INT8_THRESHOLD,
    batch_size: int | None = None,
) -> ActivationStats:
    """Outlier statistics of every selected linear layer's input over the tokens of ``input_ids`` (B, L).

    Runs ``model(input_ids)`` in eval mode without gradients, ``batch_size`` sequences at a time (all at once
    by default); the model is not modified and its hooks are removed afterwards.
    """
    import torch

    from qscale.lm.layers import linear_layers

    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
        raise ValueError("input_ids must be a torch.LongTensor of token ids, shape (batch, seq_len)")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
    if not (isinstance(threshold, int | float) and threshold > 0):
        raise ValueError(f"threshold must be a positive number (LLM.int8 uses 6), got {threshold!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    refs = linear_layers(model, include, exclude)
    if not refs:
        raise ValueError("the model has no linear layer to hook (nn.Linear / Conv1D outside the head)")
    acc = {ref.name: _Accumulator() for ref in refs}
    handles = []
    for ref in refs:
        a = acc[ref.name]

        def hook(_module: Any, args: tuple[Any, ...], _a: _Accumulator = a) -> None:
            _a.add(args[0])

        handles.append(ref.module.register_forward_pre_hook(hook))
    p = next(iter(model.parameters()), None)
    ids = input_ids.to(p.device) if p is not None else input_ids
    was_training = model.training
    kwargs: dict[str, Any] = {}
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False
    bs = batch_size or ids.shape[0]
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, ids.shape[0], bs):
                model(ids[i : i + bs], **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = {}
    for ref in refs:
        a = acc[ref.name]
        if a.absmax is None:  # a layer the forward pass never reached
            continue
        am = a.absmax
        outliers = torch.nonzero(am > threshold).flatten().tolist()
        amax = float(am.max())
        layers[ref.name] = LayerActivationStats(
            name=ref.name,
            n_channels=am.numel(),
            n_tokens=a.n // am.numel(),
            absmax=amax,
            max_over_median=_ratio(amax, _median(am)),
            kurtosis=a.kurtosis(),
            n_outlier_features=len(outliers),
            outlier_dims=tuple(int(i) for i in outliers),
            channel_absmax=tuple(float(v) for v in am),
        )
    return ActivationStats(layers=layers, threshold=float(threshold), n_tokens=int(ids.numel()))


def outlier_report(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    threshold: float = LLM_INT8_THRESHOLD,
) -> dict[str, Any]:
    """Weight statistics per linear layer (always) and activation statistics (when tokens are given)."""
    from qscale.measure.weights import model_weight_stats

    out: dict[str, Any] = {"weights": model_weight_stats(model, include, exclude)}
    if input_ids is not None:
        out["activations"] = activation_stats(
            model, input_ids, include=include, exclude=exclude, threshold=threshold
        ).to_dict()
    return out
