"""Load the fitting data (zoo run store or public tables), compare estimators by grouped CV, ship a law."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qscale.laws.artifacts import Law, data_hash, default_models_dir, save_law, training_feature_settings
from qscale.laws.cv import CVResult, cross_validate, group_column, score_row
from qscale.laws.estimators import LawError
from qscale.laws.features import zoo_table
from qscale.laws.registry import make_estimator

#: CV schemes reported by default for each kind of data.
DEFAULT_SCHEMES = {"zoo": ("family", "size"), "public": ("table", "size", "family")}


@dataclass(frozen=True)
class FitData:
    kind: str
    frame: pd.DataFrame
    source: str
    target: str | None = None  # None: the kind's default (zoo: dnll, public: log_ppl_ratio)


def load_runs(path: str | Path) -> pd.DataFrame:
    """The run-store frame from ``data/runs.sqlite`` (via qscale.collect) or a parquet/CSV export."""
    p = Path(path)
    if not p.exists():
        raise LawError(f"run store not found: {p}")
    if p.suffix in (".parquet", ".csv"):
        import pyarrow as pa

        try:
            return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
        except (
            pd.errors.EmptyDataError,
            pd.errors.ParserError,
            UnicodeDecodeError,
            pa.ArrowInvalid,
            OSError,
        ) as err:
            raise LawError(
                f"{p}: not a run table from `qscale runs export` ({type(err).__name__}: {err})"
            ) from None
    from qscale.collect.store import RunStore, StoreError

    try:
        with RunStore(p, readonly=True) as store:
            return store.to_frame()
    except StoreError as err:
        raise LawError(str(err)) from None


def load_fit_data(
    runs: str | Path | None = None,
    public: bool = False,
    public_csv: str | Path | None = None,
    target: str | None = None,
) -> FitData:
    """Exactly one of ``runs`` (zoo run store) or ``public``; ``target`` overrides the default target."""
    if (runs is None) == (not public):
        raise LawError("give exactly one data source: --runs STORE or --public")
    if public:
        from qscale.laws.public import default_path, public_fit_frame

        src = Path(public_csv) if public_csv else default_path("DEFAULT_PUBLIC_CSV")
        from qscale.laws.public import TARGETS

        tgt = target or "log_ppl_ratio"
        if tgt not in TARGETS:
            raise LawError(f"unknown public target '{tgt}'; choices: {', '.join(TARGETS)}")
        data = FitData("public", public_fit_frame(src, target=tgt), str(src), target)
    else:
        raw = load_runs(runs)
        tgt = target or "dnll"
        n_ok = len(raw) if "status" not in raw.columns else int((raw["status"].astype(str) == "ok").sum())
        if n_ok == 0:
            raise LawError(
                f"{runs}: no finished runs to fit {tgt} on; collect some first (qscale collect SPEC --store {runs})"
            )
        try:
            frame = zoo_table(raw)
        except LawError as err:  # a table that is not a run table
            raise LawError(f"{runs}: {err}") from None
        if frame.empty:
            raise LawError(
                f"{runs}: no finished runs with a finite dnll"
                + (f" (needed for every fit, including --target {tgt})" if tgt != "dnll" else "")
            )
        if tgt in frame.columns and not np.isfinite(pd.to_numeric(frame[tgt], errors="coerce")).any():
            raise LawError(f"{runs}: no finished runs with a finite {tgt}")
        data = FitData("zoo", frame, str(runs), target)
    if target is not None and target not in data.frame.columns:
        raise LawError(f"target '{target}' is not a column of the {data.kind} data")
    return data


def compare_estimators(
    data: FitData,
    names: list[str],
    schemes: tuple[str, ...] | None = None,
    alpha: float = 0.1,
    *,
    results: dict[tuple[str, str], CVResult] | None = None,
    tick: Callable[[str], None] | None = None,
    unusable: str = "raise",
) -> pd.DataFrame:
    """CV scores of every named preset under every scheme the data has (rows: scheme x estimator, in that
    order; a preset whose CV fails gets a row with its ``note``). The one comparison behind ``qscale fit``, the
    report and the demo.

    ``results`` (a dict to fill) receives each :class:`~qscale.laws.cv.CVResult` (the held-out predictions) by
    ``(preset, scheme)``; ``tick(note)`` is called before each (preset, scheme). A preset that cannot be built
    for this kind of data raises :class:`LawError`; with ``unusable="note"`` it gets a note row under each
    scheme instead.
    """
    schemes = schemes or DEFAULT_SCHEMES[data.kind]
    ests, why_not = {}, {}
    for n in names:
        try:
            ests[n] = make_estimator(n, data.kind, data.frame, data.target)
        except LawError as err:
            if unusable != "note":
                raise
            why_not[n] = str(err)
    rows: list[dict] = []
    for s in schemes:
        try:
            group_column(data.frame, s)
        except LawError:
            continue
        for n in names:
            if tick is not None:
                tick(f"{n} / {s}")
            if n in why_not:
                rows.append({"estimator": n, "scheme": s, "note": why_not[n]})
                continue
            try:
                res = cross_validate(ests[n], data.frame, s, alpha=alpha, name=n)
            except LawError as err:
                rows.append({"estimator": n, "scheme": s, "note": str(err)})
                continue
            if results is not None:
                results[(n, s)] = res
            rows.append(score_row(res))
    return pd.DataFrame(rows)


def choose(scores: pd.DataFrame, scheme: str) -> str:
    """The preset with the lowest CV MAE under ``scheme`` among those scored on all rows."""
    sub = scores[(scores["scheme"] == scheme) & scores["mae"].notna()] if "mae" in scores else scores.iloc[:0]
    if sub.empty:
        raise LawError(f"no estimator could be scored under CV scheme '{scheme}'")
    # compare like with like: only estimators scored on the most rows (laws needing e.g. training tokens
    # are scored on a subset and cannot predict for the other rows)
    sub = sub[sub["n"] == sub["n"].max()]
    return str(sub.sort_values("mae").iloc[0]["estimator"])


def fit_law(
    data: FitData,
    preset: str,
    name: str,
    scheme: str | None = None,
    scores: pd.DataFrame | None = None,
    models_dir: str | Path | None = None,
    save: bool = True,
) -> Law:
    """Fit ``preset`` on all rows (conformal calibration grouped by the CV scheme's column) and save it."""
    scheme = scheme or DEFAULT_SCHEMES[data.kind][0]
    est = make_estimator(preset, data.kind, data.frame, data.target)
    gcol = group_column(data.frame, scheme)
    est.fit(data.frame, groups=data.frame[gcol].to_numpy())
    if scores is None:
        res = cross_validate(make_estimator(preset, data.kind, data.frame, data.target), data.frame, scheme)
        cv = {scheme: res.scores}
    else:
        sub = scores[scores["estimator"] == preset]
        cv = {
            str(r["scheme"]): {
                k: r[k] for k in r.index if k not in ("estimator", "scheme", "note") and pd.notna(r[k])
            }
            for _, r in sub.iterrows()
        }
    cols = [c for c in (*est.features_, est.target, gcol) if c in data.frame.columns]
    used = data.frame[cols]
    law = Law(
        name=name,
        estimator=est,
        kind=data.kind,
        preset=preset,
        data_hash=data_hash(used),
        n_rows=int(est.n_train_),
        source=data.source,
        cv=cv,
        created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        feature_settings=(
            training_feature_settings(data.source, list(est.features_), data.frame.get("run_key"))
            if data.kind == "zoo"
            else {}
        ),
    )
    if save:
        save_law(law, Path(models_dir or default_models_dir()) / name)
    return law
