"""Report figures: values <= 0 on a log axis are dropped, marked and counted (never drawn at a floor), every
panel has a legend and readable labels, every series its own colour."""

import numpy as np
import pandas as pd
import pytest

from qscale.report import plots


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the plot functions would save (kept open for inspection)."""
    import matplotlib.pyplot as plt

    figs = []

    def keep(fig, path):
        figs.append(fig)
        fig.savefig(path, dpi=40)
        return plots.Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    yield figs

    for f in figs:
        plt.close(f)


def _runs(seed=0):
    """2 families x 2 models x 5 formats; a known set of dnll values <= 0 (negative, zero, NaN)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam in ("llama", "opt"):
        for m in ("s", "m"):
            for bits in (3, 4, 5, 6, 8):
                rows.append(
                    {
                        "family": fam,
                        "model": f"{fam}-{m}",
                        "bits_per_element": bits,
                        "dnll": 10 ** -rng.uniform(1, 4),
                    }
                )
    df = pd.DataFrame(rows)
    df.loc[[1, 7, 12], "dnll"] = [-0.002, 0.0, -1e-6]
    df.loc[18, "dnll"] = np.nan
    return df


def _drawn_points(ax):
    """(x, y) data of every marker series on ``ax`` drawn in data coordinates."""
    out = []
    for line in ax.get_lines():
        if line.get_transform() == ax.transData and line.get_marker() not in ("None", None, ""):
            out.append(np.asarray(line.get_ydata(), float))
    return np.concatenate(out) if out else np.array([])


def test_damage_vs_bits_drops_and_counts_nonpositive(tmp_path, captured):
    df = _runs()
    expected = int((~(df["dnll"] > 0)).sum())  # independent count: negative, zero and NaN
    assert expected == 4
    fig = plots.plot_damage_vs_bits(df, tmp_path / "d.png")
    assert (fig.n_dropped, fig.n_drawn) == (expected, len(df) - expected)
    assert f"{len(df) - expected} of {len(df)} runs drawn; {expected} with ΔNLL <= 0" in fig.caption
    (f,) = captured
    axes = [ax for ax in f.axes if ax.get_visible() and ax.axison]
    assert len(axes) == 2
    per_panel = {"llama": int((~(df[df.family == "llama"]["dnll"] > 0)).sum()), "opt": 0}
    per_panel["opt"] = expected - per_panel["llama"]
    for ax in axes:
        y = _drawn_points(ax)
        # nothing at a floor: every drawn y is one of the measured positive values
        pos = set(np.round(df["dnll"][df["dnll"] > 0], 15))
        assert set(np.round(y, 15)) <= pos
        leg = ax.get_legend()
        assert leg is not None, ax.get_title()
        texts = [t.get_text() for t in leg.get_texts()]
        n = per_panel[ax.get_title()]
        if n:
            assert f"{n} with ΔNLL <= 0 (not on log axis)" in texts
        # the dropped points are marked: hollow triangles on the bottom edge, one per dropped finite-x point
        marks = [ln for ln in ax.get_lines() if ln.get_marker() == "v" and ln.get_transform() != ax.transData]
        assert sum(len(ln.get_xdata()) for ln in marks) == n
        assert ax.get_xlabel() == "bits per weight element"
        assert "nats/token" in axes[0].get_ylabel() and "dnll" not in axes[0].get_ylabel()
        # one colour per model in the panel
        colours = [tuple(ln.get_color()) for ln in ax.get_lines() if ln.get_transform() == ax.transData]
        assert len(set(colours)) == len(colours) == 2


def test_pred_vs_measured_drops_nonpositive_measured_and_predicted(tmp_path, captured):
    rng = np.random.default_rng(1)
    meas = 10 ** -rng.uniform(1, 4, 30)
    pred = meas * np.exp(rng.normal(0, 0.3, 30))
    meas[[0, 5]] = [-1e-4, 0.0]  # measured <= 0
    pred[[9]] = -3e-5  # predicted <= 0
    meas[12], pred[12] = -1e-3, -1e-3  # both
    df = pd.DataFrame(
        {"dnll": meas, "pred": pred, "lo": pred - 0.01, "hi": pred * 2, "method": ["rtn", "gptq", "awq"] * 10}
    )
    fig = plots.plot_pred_vs_measured(df, "dnll", tmp_path / "p.png", color="method")
    assert fig.n_dropped == 4 and fig.n_drawn == 26
    assert "26 of 30 held-out predictions drawn; 4 with ΔNLL or prediction <= 0" in fig.caption
    # lower interval ends <= 0 (pred - 0.01 for predictions under 0.01) are reported, not hidden
    n_clip = int(((meas > 0) & (pred > 0) & (pred - 0.01 <= 0)).sum())
    assert fig.n_clipped_intervals == n_clip > 0 and f"{n_clip} interval lower ends <= 0" in fig.caption
    (f,) = captured
    (ax,) = f.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "4 with measured or predicted ΔNLL <= 0 (not on log axis)" in texts
    # rows 0, 9, 12 are rtn and row 5 is awq: the legend counts what is drawn
    assert {"awq (9)", "gptq (10)", "rtn (7)", "y = x"} <= set(texts)
    assert ax.get_xlabel().startswith("measured ΔNLL") and "(nats/token)" in ax.get_xlabel()


def test_palette_distinct_colour_per_method():
    """11 methods (the public data's count before the codebook rows went) once shared tab10's first colour."""
    methods = [f"m{i}" for i in range(11)]
    cols = plots.palette(methods)
    assert len(set(cols.values())) == 11
    assert len(set(plots.palette([f"m{i}" for i in range(25)]).values())) == 25
    st = plots.styles(methods)
    assert len({(s["color"], s["marker"]) for s in st.values()}) == 11


def test_positive_mask():
    assert plots.positive(np.array([1.0, 0.0, -1.0, np.nan, np.inf]), np.ones(5)).tolist() == [
        True,
        False,
        False,
        False,
        False,
    ]
