"""Table writers (Markdown, LaTeX, HTML, CSV) for report frames, with one number format.

Numbers are written with ``digits`` significant digits (``0.012345 -> 0.01235`` at 4), NaN as ``-``; cells a
``mask`` marks (see :func:`diverged_mask`, the one rule for a CV fit that diverged) as ``diverged``.

>>> import pandas as pd
>>> print(to_markdown(pd.DataFrame({"model": ["a"], "dnll": [0.012345]})))
| model | dnll |
| --- | ---: |
| a | 0.01235 |
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd


def fmt_value(x, digits: int = 4) -> str:
    """One cell as text: integers as is, floats to ``digits`` significant digits, NaN/None as '-'."""
    if x is None:
        return "-"
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return "-" if math.isnan(x) else f"{float(x):.{digits}g}"
    return str(x)


#: A CV score is shown as "diverged" when its MAE exceeds this many times the spread of the measured target.
DIVERGED_FACTOR = 100.0
DIVERGED = "diverged"
#: Error metrics computed from the same held-out predictions as the MAE: diverged together with it.
_LINKED = {
    "mae": ("mae", "rmse", "r2"),
    "mae_largest": ("mae_largest",),
    "mae_delta_ppl": ("mae_delta_ppl",),
}


def diverged_rule(spread: float, target: str = "target") -> str:
    """The rule in words, for the report under the tables that apply it."""
    return (
        f"`diverged`: a held-out MAE of {target} more than {DIVERGED_FACTOR:g}x its measured spread (standard "
        f"deviation {spread:.4g}); the fit diverged on some fold, and its MAE (with the RMSE and R^2 computed "
        "from the same predictions) is not shown as a number."
    )


def is_diverged(mae: float, spread: float) -> bool:
    """``mae > DIVERGED_FACTOR * spread`` (an infinite MAE too; NaN = not scored is not diverged).

    >>> is_diverged(8.7e21, 0.0053), is_diverged(0.016, 0.0053), is_diverged(float("nan"), 1.0)
    (True, False, False)
    """
    return bool(not math.isnan(mae) and mae > DIVERGED_FACTOR * spread)


def fmt_mae(mae: float, spread: float | None, digits: int = 4) -> str:
    """One MAE cell: ``diverged`` by :func:`is_diverged`, else :func:`fmt_value`."""
    if spread is not None and is_diverged(float(mae), spread):
        return DIVERGED
    return fmt_value(float(mae), digits)


def diverged_mask(
    scores: pd.DataFrame, spread: float | dict[str, float], mae_cols: dict[str, tuple[str, ...]] | None = None
) -> pd.DataFrame:
    """Boolean frame (shape of ``scores``): True where a cell belongs to a diverged fit. Each key of ``mae_cols``
    (default: ``mae`` -> mae, rmse, r2; ``mae_largest`` -> itself) is an MAE column judged by
    :func:`is_diverged` against ``spread`` (one number, or one per MAE column: a column without one is not
    judged); its linked columns are marked with it."""
    mask = pd.DataFrame(False, index=scores.index, columns=scores.columns)
    for mae_col, linked in (mae_cols or _LINKED).items():
        s = spread.get(mae_col) if isinstance(spread, dict) else spread
        if mae_col not in scores.columns or s is None:
            continue
        vals = pd.to_numeric(scores[mae_col], errors="coerce").to_numpy(float)
        bad = np.array([is_diverged(float(v), float(s)) for v in vals], dtype=bool)
        for c in linked:
            if c in mask.columns:
                mask[c] = mask[c].to_numpy() | bad
    return mask


def _cells(df: pd.DataFrame, digits: int, mask: pd.DataFrame | None = None) -> list[list[str]]:
    rows = [[fmt_value(v, digits) for v in row] for row in df.itertuples(index=False, name=None)]
    if mask is not None:
        m = mask.reindex(index=df.index, columns=df.columns, fill_value=False).to_numpy(bool)
        for i, j in zip(*np.nonzero(m), strict=True):
            rows[i][j] = DIVERGED
    return rows


def _numeric(df: pd.DataFrame) -> list[bool]:
    return [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]


def to_markdown(df: pd.DataFrame, digits: int = 4, mask: pd.DataFrame | None = None) -> str:
    """GitHub-flavoured Markdown table; numeric columns right-aligned; '|' in cells escaped; cells where
    ``mask`` is True written as ``diverged``."""
    head = "| " + " | ".join(str(c).replace("|", "\\|") for c in df.columns) + " |"
    align = "| " + " | ".join("---:" if n else "---" for n in _numeric(df)) + " |"
    rows = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _cells(df, digits, mask)]
    return "\n".join([head, align, *rows])


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(s: str) -> str:
    """Escape LaTeX specials: ``int4_g128 & 5%`` -> ``int4\\_g128 \\& 5\\%``."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in s)


def to_latex(df: pd.DataFrame, digits: int = 4, caption: str | None = None) -> str:
    """A booktabs ``tabular`` (``l`` for text columns, ``r`` for numbers), optionally in a table float."""
    spec = "".join("r" if n else "l" for n in _numeric(df))
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(str(c)) for c in df.columns) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in r) + " \\\\" for r in _cells(df, digits)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    body = "\n".join(lines)
    if caption:
        body = f"\\begin{{table}}\n\\centering\n\\caption{{{latex_escape(caption)}}}\n{body}\n\\end{{table}}"
    return body


def to_html(df: pd.DataFrame, digits: int = 4, title: str | None = None) -> str:
    """A standalone HTML table (cells HTML-escaped)."""
    num = _numeric(df)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for r in _cells(df, digits):
        tds = "".join(
            f'<td style="text-align:right">{html.escape(c)}</td>' if n else f"<td>{html.escape(c)}</td>"
            for c, n in zip(r, num, strict=True)
        )
        rows.append(f"<tr>{tds}</tr>")
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_table(
    df: pd.DataFrame, stem: str | Path, formats=("md", "csv", "tex", "html"), title: str = ""
) -> list[Path]:
    """Write ``df`` as ``stem.md`` / ``.csv`` / ``.tex`` / ``.html``; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for f in formats:
        p = stem.with_suffix(f".{f}")
        if f == "md":
            p.write_text((f"# {title}\n\n" if title else "") + to_markdown(df) + "\n")
        elif f == "csv":
            df.to_csv(p, index=False)
        elif f == "tex":
            p.write_text(to_latex(df, caption=title or None) + "\n")
        elif f == "html":
            p.write_text(to_html(df, title=title or None) + "\n")
        else:
            raise ValueError(f"unknown table format {f!r}; choices: md, csv, tex, html")
        out.append(p)
    return out


def runs_table(frame: pd.DataFrame, value: str = "dnll") -> pd.DataFrame:
    """Model x format pivot of ``value`` (formats ordered by bits per element, then name)."""
    need = ["model", "format", value]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise ValueError(f"run frame lacks {missing}")
    order = frame.drop_duplicates("format")
    if "bits_per_element" in order.columns:
        order = order.sort_values(["bits_per_element", "format"], ascending=[False, True])
    cols = list(order["format"])
    piv = frame.pivot_table(index="model", columns="format", values=value, aggfunc="mean")
    piv = piv.reindex(columns=cols)
    if "n_nonembed" in frame.columns:
        n = frame.groupby("model")["n_nonembed"].first()
        fam = frame.groupby("model")["family"].first() if "family" in frame.columns else None
        key = pd.DataFrame({"n": n, "fam": fam if fam is not None else ""}).sort_values(["fam", "n"])
        piv = piv.reindex(key.index)
    piv.columns.name = None
    return piv.reset_index()
