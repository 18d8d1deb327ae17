"""Feature tables for the laws: how a column enters a law, and the zoo-run table.

A law's design matrix is built from named columns. How a column enters it (its unit and transform: ``log`` for
scale-like quantities, ``none`` for already-logarithmic or small-ranged ones, ``cat`` for categories) is the
feature registry's (:mod:`qscale.features`, the one place a feature is defined). A column that is no qscale
feature (a user's own) is accepted when numeric (unit "?", no transform) or as a category when it is not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qscale.features import Column, column_info


def feature_info(name: str, frame: pd.DataFrame | None = None) -> Column:
    """The registry's :class:`~qscale.features.Column` of ``name``; a column no registered feature leaves is
    numeric with unit '?' (or a category if non-numeric in ``frame``), and its ``feature`` is ``""``."""
    info = column_info(name)
    if info is not None:
        return info
    if frame is not None and name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name]):
        return Column(name, "", "category", "cat")
    return Column(name, "", "?", "none")


#: The identity columns of a run kept in the zoo law table (not features; ``family`` is the CV group).
ZOO_ID_COLUMNS = ("model", "family", "format")

#: Outcomes of a run in its table: never features (the damage measures are targets, see ALT_TARGETS).
_NOT_FEATURES = {
    "nll",
    "dnll",
    "ppl",
    "float_ppl",
    "bpb",
    "kld",
    "top1",
    "status",
    "run_key",
}


#: Damage measures of a run besides dnll that a zoo law may be fitted to (``qscale fit --target kld``).
ALT_TARGETS = ("kld", "top1")


def zoo_table(frame: pd.DataFrame, ok_status: str = "ok") -> pd.DataFrame:
    """The law-fitting table from ``RunStore(path).to_frame()``: finished runs with a finite ``dnll``.

    Keeps the identity columns, every column of a registered feature (:mod:`qscale.features`), every other
    numeric column that is not an outcome, and the target ``dnll`` (the other damage measures as alternative
    targets); adds ``group`` (= family) and ``size`` (rank of N within the family) for grouped CV.
    """
    needed = ["model", "family", "format", "dnll", "n_nonembed", "bits_per_element"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        from qscale.laws.estimators import LawError

        raise LawError(
            f"not a run table: it lacks columns {missing}; expected the columns of RunStore.to_frame() / "
            f"`qscale runs export` (docs/interfaces.md), got {sorted(frame.columns)}"
        )
    df = frame
    if "status" in df.columns:
        df = df[df["status"].astype(str) == ok_status]
    df = df[np.isfinite(pd.to_numeric(df["dnll"], errors="coerce"))]
    ids = [c for c in ZOO_ID_COLUMNS if c in df.columns]
    feats = [c for c in df.columns if c not in ids and c not in _NOT_FEATURES and column_info(c) is not None]
    extra = [
        c
        for c in df.columns
        if c not in ids
        and c not in feats
        and c not in _NOT_FEATURES
        and c != "dnll"
        and pd.api.types.is_numeric_dtype(df[c])
    ]
    # other damage measures stay in the table as alternative targets (--target kld), never as features
    targets = ["dnll", *[c for c in ALT_TARGETS if c in df.columns]]
    out = df[ids + feats + extra + targets].copy()
    for col in feats:  # scale features as floats (counts come as ints), and numbers stored as None as NaN
        transform = column_info(col).transform
        if transform == "log" or (transform != "cat" and not pd.api.types.is_numeric_dtype(out[col])):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    out["group"] = out["family"].astype(str)
    # size = rank of the model's N within its family (1 = smallest): leave-one-size-out then holds out
    # e.g. every family's largest model at once ("extrapolate to the largest model")
    out["size"] = out.groupby("family")["n_nonembed"].rank(method="dense").astype(int)
    return out.reset_index(drop=True)
