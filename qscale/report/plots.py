"""Report figures (PNG, matplotlib Agg backend): damage vs bits per family, predicted vs measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _floor(y: np.ndarray, floor: float) -> np.ndarray:
    return np.where(y > floor, y, floor)


def plot_damage_vs_bits(
    frame: pd.DataFrame,
    path: str | Path,
    x: str = "bits_per_element",
    y: str = "dnll",
    panel: str = "family",
    series: str = "model",
    floor: float = 1e-5,
    title: str = "",
) -> Path:
    """One panel per ``panel`` value; ``y`` (log scale, values <= floor drawn at the floor) against ``x``,
    one marker series per ``series`` value."""
    plt = _plt()
    panels = sorted(frame[panel].astype(str).unique())
    n = len(panels)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    for ax, p in zip(axes.flat, panels, strict=False):
        sub = frame[frame[panel].astype(str) == p]
        for name, s in sub.groupby(series):
            s = s.sort_values(x)
            ax.plot(s[x], _floor(s[y].to_numpy(float), floor), "o-", ms=3, lw=0.8, label=str(name))
        ax.set_yscale("log")
        ax.set_title(p, fontsize=9)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if len(sub[series].unique()) <= 8:
            ax.legend(fontsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel(f"{y} (log)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pred_vs_measured(
    preds: pd.DataFrame,
    target: str,
    path: str | Path,
    color: str | None = None,
    floor: float = 1e-5,
    title: str = "",
) -> Path:
    """Held-out predictions (``pred``, ``lo``, ``hi``) against measured ``target``, log-log, with y = x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.6))
    y = _floor(preds[target].to_numpy(float), floor)
    p = _floor(preds["pred"].to_numpy(float), floor)
    lo = _floor(preds["lo"].to_numpy(float), floor)
    hi = _floor(preds["hi"].to_numpy(float), floor)
    groups = (
        preds[color].astype(str) if color and color in preds.columns else pd.Series("all", index=preds.index)
    )
    for g in sorted(groups.unique()):
        m = (groups == g).to_numpy()
        ax.errorbar(y[m], p[m], yerr=[p[m] - lo[m], hi[m] - p[m]], fmt="o", ms=3, lw=0.5, alpha=0.7, label=g)
    lim = [min(y.min(), p.min()), max(y.max(), p.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel(f"predicted {target} (held out)")
    if groups.nunique() <= 12:
        ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
