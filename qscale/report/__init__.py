"""qscale.report: tables (Markdown, LaTeX, HTML, CSV) and plots regenerated from the run store and the laws.

``write_report(runs=..., out="reports")`` (see :mod:`qscale.report.build`) writes runs.md, laws.md and the
figures; :mod:`qscale.report.tables` has the writers, :mod:`qscale.report.plots` the figures.
"""

from __future__ import annotations

from typing import Any

__all__ = ["write_report"]


def __getattr__(name: str) -> Any:
    if name == "write_report":
        from qscale.report.build import write_report

        return write_report
    raise AttributeError(f"module 'qscale.report' has no attribute {name!r}")
