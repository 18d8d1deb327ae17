"""qscale.report: tables (Markdown, LaTeX, HTML, CSV) and plots regenerated from the run stores and the laws.

``write_report(runs=..., panel=..., out="reports")`` (see :mod:`qscale.report.build`) writes runs.md, laws.md
and the figures; ``qscale report`` with no options passes the committed report's inputs
(:data:`qscale.report.build.DEFAULT_RUNS`, ``DEFAULT_PANEL``, ``DEFAULT_PROFILE_CACHE``), which it only reads.
:mod:`qscale.report.tables` has the writers and the one "diverged" rule for absurd CV scores,
:mod:`qscale.report.plots` the figures (log axes drop, mark and count values <= 0).
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from qscale.report.build import write_report

        return write_report
    raise AttributeError(f"module 'qscale.report' has no attribute {name!r}")
