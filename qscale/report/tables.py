"""Table writers (Markdown, LaTeX, HTML, CSV) for report frames, with one number format.

Numbers are written with ``digits`` significant digits (``0.012345 -> 0.01235`` at 4), NaN as ``-``.

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


def _cells(df: pd.DataFrame, digits: int) -> list[list[str]]:
    return [[fmt_value(v, digits) for v in row] for row in df.itertuples(index=False, name=None)]


def _numeric(df: pd.DataFrame) -> list[bool]:
    return [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """GitHub-flavoured Markdown table; numeric columns right-aligned; '|' in cells escaped."""
    head = "| " + " | ".join(str(c).replace("|", "\\|") for c in df.columns) + " |"
    align = "| " + " | ".join("---:" if n else "---" for n in _numeric(df)) + " |"
    rows = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in _cells(df, digits)]
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
