"""Report figures (PNG, matplotlib Agg backend): damage vs bits per panel, predicted vs measured.

Rules every figure here follows:

* **Log axes never clip.** A value <= 0 (or not finite) has no place on a log axis: it is dropped from the
  data drawn, *marked* as a hollow triangle on the axis edge it fell through (same colour as its series), and
  counted; the count is in the panel's legend and in :attr:`Figure.caption`, which the report prints under the
  figure. Interval ends <= 0 are drawn to the axis edge and counted as well.
* **Readable axis labels with units** from :data:`LABELS` (column names only as a fallback).
* **A legend on every panel**; **a distinct colour per series** (:func:`palette`: tab10 up to 10 labels,
  tab20 up to 20, evenly spaced hues beyond), so e.g. each quantization method has its own colour.

Each plotting function returns a :class:`Figure` (path, points drawn, points dropped, caption).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Axis label (with unit) per column; :func:`label` falls back to the column name.
LABELS = {
    "dnll": "ΔNLL = quantized − float NLL (nats/token)",
    "kld": "KL(float ‖ quantized) (nats/token)",
    "log_ppl_ratio": "log(ppl / fp16 ppl) (nats/token)",
    "delta_ppl": "Δ perplexity",
    "bits_per_element": "bits per weight element",
    "bpw": "bits per weight",
    "sqnr_db": "weight SQNR (dB)",
    "n_nonembed": "non-embedding parameters",
}

#: Short names of the quantities, for legends and captions ("3 runs with dnll <= 0").
SHORT = {"dnll": "ΔNLL", "kld": "KL", "log_ppl_ratio": "log ppl ratio"}


def label(col: str) -> str:
    """The axis label of a column: ``label("dnll") -> 'ΔNLL = quantized − float NLL (nats/token)'``."""
    return LABELS.get(col, col)


def short(col: str) -> str:
    return SHORT.get(col, col)


@dataclass(frozen=True)
class Figure:
    """A written figure: ``n_drawn`` points on the axes, ``n_dropped`` left off a log axis (value <= 0),
    ``n_clipped_intervals`` interval ends <= 0 drawn to the edge; ``caption`` says so in words."""

    path: Path
    n_drawn: int
    n_dropped: int
    caption: str
    n_clipped_intervals: int = 0


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def palette(labels: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A distinct colour per label (in the order given): tab10 up to 10 labels; up to 20, tab20 with its ten
    dark hues first, then their light twins; beyond, evenly spaced hues."""
    plt = _plt()
    labels = list(dict.fromkeys(str(x) for x in labels))
    n = len(labels)
    if n <= 10:
        cols = [plt.get_cmap("tab10")(i) for i in range(n)]
    elif n <= 20:
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        cols = [plt.get_cmap("tab20")(order[i]) for i in range(n)]
    else:
        cols = [plt.get_cmap("hsv")(i / n) for i in range(n)]
    return dict(zip(labels, cols, strict=True))


def styles(labels: Sequence[str]) -> dict[str, dict]:
    """Colour (:func:`palette`) and marker per label: the marker changes every 10 labels, so a light tab20
    twin never looks like its dark hue."""
    cols = palette(labels)
    return {
        k: {"color": c, "marker": _MARKERS[(i // 10) % len(_MARKERS)]}
        for i, (k, c) in enumerate(cols.items())
    }


def _legend(ax, handles, labels_, n_series: int) -> None:
    """Inside the axes for a few series; below the axes (outside the data) for many."""
    if n_series <= 6:
        ax.legend(handles, labels_, fontsize=6.5)
    else:
        ax.legend(
            handles,
            labels_,
            fontsize=6,
            ncol=2,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            frameon=False,
        )


def positive(*arrays: np.ndarray) -> np.ndarray:
    """Mask of the points drawable on log axes: every array finite and > 0."""
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        a = np.asarray(a, dtype=float)
        ok &= np.isfinite(a) & (a > 0)
    return ok


def _mark_dropped(ax, x: np.ndarray, y: np.ndarray, color, x_log: bool) -> int:
    """Hollow triangles on the edge for points with y <= 0 (bottom edge, at their x) or, when ``x_log``, x <= 0
    (left edge, at their y; both: the corner). Returns how many were marked."""
    import matplotlib.transforms as mtransforms

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    bad_y = ~(np.isfinite(y) & (y > 0))
    bad_x = ~(np.isfinite(x) & (x > 0)) if x_log else np.zeros(len(x), bool)
    kw = {"ms": 5, "mfc": "none", "mec": color, "ls": "none", "clip_on": False, "zorder": 5}
    m = bad_y & ~bad_x & np.isfinite(x)
    if m.any():
        tr = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(x[m], np.zeros(m.sum()), "v", transform=tr, **kw)
    m2 = bad_x & ~bad_y
    if m2.any():
        tr = mtransforms.blended_transform_factory(ax.transAxes, ax.transData)
        ax.plot(np.zeros(m2.sum()), y[m2], "<", transform=tr, **kw)
    m3 = bad_x & bad_y
    if m3.any():
        ax.plot([0.0] * int(m3.sum()), [0.0] * int(m3.sum()), "v", transform=ax.transAxes, **kw)
    return int((bad_x | bad_y).sum())


def _dropped_handle(n: int, what: str):
    from matplotlib.lines import Line2D

    return Line2D(
        [],
        [],
        marker="v",
        ls="none",
        mfc="none",
        mec="0.3",
        ms=5,
        label=f"{n} with {what} <= 0 (not on log axis)",
    )


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _caption(n_drawn: int, n_dropped: int, what: str, unit: str = "points", n_clip: int = 0) -> str:
    total = n_drawn + n_dropped
    if n_dropped:
        text = (
            f"{n_drawn} of {total} {unit} drawn; {n_dropped} with {what} <= 0 cannot be shown on the log axis "
            "and are marked as hollow triangles on the axis edge."
        )
    else:
        text = f"All {total} {unit} drawn (none with {what} <= 0)."
    if n_clip:
        text += f" {n_clip} interval lower ends <= 0 are drawn to the axis edge."
    return text


def plot_damage_vs_bits(
    frame: pd.DataFrame,
    path: str | Path,
    x: str = "bits_per_element",
    y: str = "dnll",
    panel: str = "family",
    series: str = "model",
    title: str = "",
    unit: str = "runs",
) -> Figure:
    """One panel per ``panel`` value: ``y`` (log scale) against ``x``, one colour per ``series`` value, markers
    only (formats of equal bits are different points, not a curve). Values <= 0 are dropped and marked."""
    plt = _plt()
    panels = sorted(frame[panel].astype(str).unique())
    n = len(panels)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.8 * cols, 4.6 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    n_drawn = n_dropped = 0
    for ax, p in zip(axes.flat, panels, strict=False):
        sub = frame[frame[panel].astype(str) == p]
        names = sorted(sub[series].astype(str).unique())
        sty = styles(names)
        dropped_here = 0
        for name in names:
            s = sub[sub[series].astype(str) == name].sort_values(x)
            xv, yv = s[x].to_numpy(float), s[y].to_numpy(float)
            ok = positive(yv)
            ax.plot(xv[ok], yv[ok], ls="none", ms=3.5, alpha=0.85, **sty[name], label=f"{name} ({ok.sum()})")
            dropped_here += _mark_dropped(ax, xv, yv, sty[name]["color"], x_log=False)
            n_drawn += int(ok.sum())
        n_dropped += dropped_here
        ax.set_yscale("log")
        ax.set_title(p, fontsize=9)
        ax.set_xlabel(label(x), fontsize=8)
        ax.grid(alpha=0.3)
        handles, labels_ = ax.get_legend_handles_labels()
        if dropped_here:
            handles.append(_dropped_handle(dropped_here, short(y)))
            labels_.append(handles[-1].get_label())
        _legend(ax, handles, labels_, len(names))
    for ax in axes.flat[n:]:
        ax.axis("off")
    for r in range(rows):
        axes[r, 0].set_ylabel(f"{label(y)}, log scale", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return Figure(_save(fig, path), n_drawn, n_dropped, _caption(n_drawn, n_dropped, short(y), unit))


def plot_pred_vs_measured(
    preds: pd.DataFrame,
    target: str,
    path: str | Path,
    color: str | None = None,
    title: str = "",
    unit: str = "held-out predictions",
) -> Figure:
    """Held-out predictions (``pred``, ``lo``, ``hi``) against measured ``target``, log-log, with y = x; one
    colour per ``color`` value. Points with measured or predicted <= 0 are dropped and marked."""
    plt = _plt()
    n_groups = len(set(_groups(preds, color)))
    fig, ax = plt.subplots(figsize=(5.6 + 2.4 * (n_groups > 6), 5.0), layout="constrained")
    n_drawn, n_dropped, n_clip = _scatter_with_intervals(ax, preds, target, color, what=short(target))
    ax.set_xlabel(f"measured {label(target)}", fontsize=8)
    ax.set_ylabel(f"predicted {label(target)}, held out", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return Figure(
        _save(fig, path),
        n_drawn,
        n_dropped,
        _caption(n_drawn, n_dropped, f"{short(target)} or prediction", unit, n_clip),
        n_clip,
    )


def _groups(preds: pd.DataFrame, color: str | None) -> np.ndarray:
    if color and color in preds.columns:
        return preds[color].astype(str).to_numpy()
    return np.array(["all"] * len(preds), dtype=object)


def _scatter_with_intervals(
    ax, preds: pd.DataFrame, target: str, color: str | None, what: str, sty: dict | None = None
) -> tuple[int, int, int]:
    """Draw one pred-vs-measured scatter on ``ax`` (y = x line, legend); returns (drawn, dropped, clipped).
    ``sty``: the styles of every group (shared across panels); default: those of the groups here."""
    y = preds[target].to_numpy(float)
    p = preds["pred"].to_numpy(float)
    lo = preds["lo"].to_numpy(float) if "lo" in preds else p
    hi = preds["hi"].to_numpy(float) if "hi" in preds else p
    groups = _groups(preds, color)
    names = sorted(set(groups))
    sty = sty or styles(names)
    ok = positive(y, p)
    n_dropped = 0
    for g in names:
        m = groups == g
        mo = m & ok
        ax.errorbar(
            y[mo],
            p[mo],
            yerr=[p[mo] - lo[mo], hi[mo] - p[mo]],
            fmt=sty[g]["marker"],
            ms=3.5,
            lw=0.6,
            alpha=0.75,
            color=sty[g]["color"],
            label=f"{g} ({int(mo.sum())})",
        )
        n_dropped += _mark_dropped(ax, y[m], p[m], sty[g]["color"], x_log=True)
    n_clip = int((ok & ~(np.isfinite(lo) & (lo > 0))).sum())
    if ok.any():
        vals = np.concatenate([y[ok], p[ok]])
        lim = [vals.min() / 1.5, vals.max() * 1.5]
        ax.plot(lim, lim, "k--", lw=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="clip")
    handles, labels_ = ax.get_legend_handles_labels()
    if n_dropped:
        handles.append(_dropped_handle(n_dropped, f"measured or predicted {what}"))
        labels_.append(handles[-1].get_label())
    if len(names) <= 6:
        ax.legend(handles, labels_, fontsize=6.5)
    else:  # many groups: beside the axes, off the data
        ax.legend(handles, labels_, fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    return int(ok.sum()), n_dropped, n_clip


def plot_pred_vs_measured_by(
    preds: pd.DataFrame,
    target: str,
    path: str | Path,
    panel: str = "model",
    color: str | None = None,
    title: str = "",
    unit: str = "runs",
) -> Figure:
    """One pred-vs-measured panel per ``panel`` value (e.g. per model), same rules as
    :func:`plot_pred_vs_measured`; predictions need not be held out (the y label says "predicted")."""
    plt = _plt()
    panels = list(dict.fromkeys(preds[panel].astype(str)))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False, layout="constrained"
    )
    tot = [0, 0, 0]
    sty = styles(sorted(set(_groups(preds, color))))
    for ax, name in zip(axes[0], panels, strict=True):
        sub = preds[preds[panel].astype(str) == name]
        res = _scatter_with_intervals(ax, sub, target, color, what=short(target), sty=sty)
        tot = [a + b for a, b in zip(tot, res, strict=True)]
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"measured {label(target)}", fontsize=8)
        ax.set_ylabel(f"predicted {label(target)}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    n_drawn, n_dropped, n_clip = tot
    cap = _caption(n_drawn, n_dropped, f"{short(target)} or prediction", unit, n_clip)
    return Figure(_save(fig, path), n_drawn, n_dropped, cap, n_clip)


__all__ = [
    "LABELS",
    "Figure",
    "label",
    "palette",
    "styles",
    "plot_damage_vs_bits",
    "plot_pred_vs_measured",
    "plot_pred_vs_measured_by",
    "positive",
]
