"""Law artifacts: ``models/<name>/`` with ``manifest.json``, ``params.json`` and, for tree ensembles and
Gaussian processes, ``model.skops``. Nothing is ever pickled and loading never runs code from the artifact:

* the estimator class is looked up by *name* in :data:`qscale.laws.registry.ESTIMATOR_CLASSES`
  (never imported from a path written in the file), and its constructor only gets JSON values whose keys
  are checked against the class's parameters;
* ``model.skops`` is loaded with an explicit trusted-types list (:data:`TRUSTED_SKOPS_TYPES`); a file
  naming any other type is refused before it is loaded, and the loaded object's type is checked.

The manifest hashes every other file (``files``: name -> sha256), so a changed file fails verification.

``feature_settings`` in the manifest say how the law's data-dependent features (cost "eval" / "hvp", e.g.
``float_nll``, ``top_eig``) were measured for its training data, so a prediction measures them the same way::

    "feature_settings": {
      "eval": {"corpus": "enwiki_gensim", "split": "test", "protocol": "stride", "seq_len": 64, "max_tokens": 8192},
      "calibration": {"corpus": "enwiki_gensim", "n_samples": 32, "seq_len": 256, "seed": 0}
    }

``eval`` is the run's evaluation record (``qscale.collect.spec.EvalSpec``; float_nll / float_bpb are the float
model's scores on those windows), ``calibration`` the calibration record whose batch the features got as
``ctx.calib`` (``CalibrationSpec``). A law without them (fitted before they were stored, or on a parquet/CSV
export) is predicted with the collection defaults, and every such prediction says so in a warning.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qscale.laws.estimators import LawError, LawEstimator
from qscale.laws.registry import ESTIMATOR_CLASSES
from qscale.paths import repo_path
from qscale.registry import unknown_name_message

SCHEMA_VERSION = 1


def default_models_dir() -> Path:
    """The shipped laws, ``<project root>/models`` (:func:`qscale.paths.repo_path`): in an installed package a
    one-line :class:`qscale.paths.PathError` naming ``--models-dir``. Resolved when asked for, never at import."""
    return repo_path("models", option="--models-dir")


def _base(models_dir: str | Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else default_models_dir()


#: Types beyond skops' defaults that our skops files may contain (found by saving each model kind).
TRUSTED_SKOPS_TYPES = (
    "sklearn.tree._tree.Tree",
    "sklearn.gaussian_process.kernels.ConstantKernel",
    "sklearn.gaussian_process.kernels.Product",
    "sklearn.gaussian_process.kernels.RBF",
    "sklearn.gaussian_process.kernels.Sum",
    "sklearn.gaussian_process.kernels.WhiteKernel",
)

#: The scikit-learn class each skops-stored estimator must load as.
_SKOPS_MODEL_TYPES = {
    "forest": "sklearn.ensemble._forest.RandomForestRegressor",
    "boosting": "sklearn.ensemble._gb.GradientBoostingRegressor",
    "gp": "sklearn.gaussian_process._gpr.GaussianProcessRegressor",
}

TARGET_UNITS = {
    "dnll": "nats/token",
    "log_ppl_ratio": "nats/token (log ppl ratio)",
    "delta_ppl": "ppl",
    "kld": "nats/token (KL to the float model)",
    "top1": "fraction of tokens",
    "acc_drop": "accuracy points (0-100, baseline - quantized)",
}


@dataclass
class Law:
    """A fitted estimator plus what is needed to trust and use it."""

    name: str
    estimator: LawEstimator
    kind: str  # "zoo" | "public"
    preset: str
    data_hash: str = ""
    n_rows: int = 0
    source: str = ""
    cv: dict = field(default_factory=dict)
    created: str = ""
    qscale_version: str = ""
    path: Path | None = None
    #: how the data-dependent features of the training data were measured ({"eval": ..., "calibration": ...});
    #: empty when unknown (see the module docstring)
    feature_settings: dict = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.estimator.target

    @property
    def features(self) -> list[str]:
        return list(self.estimator.features_)


def data_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows (values only, column order as given): identifies the training data."""
    h = hashlib.sha256()
    h.update(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def manifest_of(law: Law) -> dict:
    est = law.estimator
    from qscale import __version__

    extra = {"feature_settings": _jsonable(law.feature_settings)} if law.feature_settings else {}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": law.name,
        "kind": law.kind,
        "preset": law.preset,
        "estimator": est.name,
        "storage": est.storage,
        "params": _jsonable(est.get_params()),
        "features": [{"name": f, **est.feature_info_[f]} for f in est.features_],
        "feature_ranges": _jsonable(est.feature_ranges_),
        "categories": est.categories_,
        "target": {"name": est.target, "unit": TARGET_UNITS.get(est.target, "?"), "scale": est.target_scale},
        "interval": est.interval,
        "calibration": getattr(est, "calibration_", ""),
        "training": {"hash": law.data_hash, "rows": law.n_rows, "source": law.source},
        "cv": _jsonable(law.cv),
        "qscale_version": law.qscale_version or __version__,
        "created": law.created or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }


class ArtifactError(LawError):
    """A law artifact cannot be written or read where it was asked for (disk full, read-only directory, a path
    that is not a directory): one line naming the directory and the reason."""


def save_law(law: Law, directory: str | Path) -> Path:
    """Write the artifact; returns its directory.

    The files are written into a hidden sibling directory and swapped in only when complete, so a failed write
    (disk full, ...) raises :class:`ArtifactError` and leaves the law already at ``directory`` as it was.
    """
    import os
    import shutil
    import uuid

    d = Path(directory)
    est = law.estimator
    if not hasattr(est, "features_"):
        raise LawError("cannot save an unfitted law")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = d.with_name(f".{d.name}.tmp-{tag}")
    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        (tmp / "params.json").write_text(json.dumps(_jsonable(est.get_state()), indent=1) + "\n")
        files = ["params.json"]
        if est.storage == "skops":
            import skops.io as sio

            sio.dump(est.model_, tmp / "model.skops")
            files.append("model.skops")
        manifest = manifest_of(law)
        manifest["files"] = {f: _sha256_file(tmp / f) for f in files}
        # the manifest goes last: a half-written artifact has no manifest and is never listed or loaded
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        if d.exists():
            old = d.with_name(f".{d.name}.old-{tag}")
            d.rename(old)
            tmp.rename(d)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(d)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        why = err.strerror or str(err)
        raise ArtifactError(
            f"cannot write law '{law.name}' to {d}: {why}; any law already there is unchanged"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    law.path = d
    return d


def training_feature_settings(
    source: str | Path, features: list[str] | tuple[str, ...], run_keys: object = None
) -> dict:
    """The ``feature_settings`` of a law fitted on the runs in store ``source`` (module docstring).

    ``{}`` when none of ``features`` is data-dependent (nothing to reproduce) or when ``source`` is not a run
    store (a parquet/CSV export keeps no settings: predictions then use the collection defaults and say so).
    ``run_keys`` (e.g. the fit frame's ``run_key`` column) restricts the runs to those the law was fitted on.
    Raises :class:`LawError` when those runs measured the features in more than one way: no single setting
    would reproduce them.
    """
    from qscale.collect.spec import recorded_feature_settings
    from qscale.features import data_features
    from qscale.laws.predict import _registered_name  # store column -> registered feature

    data = data_features([n for n in dict.fromkeys(map(_registered_name, features)) if n is not None])
    p = Path(source)
    if not data or p.suffix in (".parquet", ".csv") or not p.is_file():
        return {}
    from qscale.collect.store import RunStore, StoreError, drop_superseded

    keys = None if run_keys is None else {str(k) for k in run_keys}  # type: ignore[attr-defined]
    try:
        with RunStore(p, readonly=True) as store:
            rows = drop_superseded(store.rows("ok"))
    except StoreError as err:
        raise LawError(str(err)) from None
    seen: list[dict] = []
    for row in rows:
        if keys is not None and row["run_key"] not in keys:
            continue
        rec = recorded_feature_settings(row)
        if rec not in seen:
            seen.append(rec)
    if len(seen) > 1:
        raise LawError(
            f"{p}: the runs measured {', '.join(data)} in {len(seen)} different ways (eval or calibration "
            "settings); fit a law with these features on runs of one setting"
        )
    return seen[0] if seen else {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_law(name_or_path: str | Path, models_dir: str | Path | None = None) -> str:
    """Check an artifact's files against the sha256 hashes in its manifest.

    Returns ``"verified"`` or ``"unverified"`` (an older artifact whose manifest has no hashes: still
    loadable); raises :class:`LawError` naming the file when the manifest is unreadable, a file is missing
    or a hash does not match.
    """
    d = resolve_law_dir(name_or_path, models_dir)
    manifest = _read_manifest(d)
    files = manifest.get("files")
    if files is None:
        return "unverified"
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise LawError(f"{d.name}: manifest 'files' is not a mapping of file name to sha256")
    for fname, digest in files.items():
        path = d / fname
        if Path(fname).name != fname or not path.is_file():
            raise LawError(f"{d.name}: {fname} is missing")
        if _sha256_file(path) != digest:
            raise LawError(f"{d.name}: {fname} does not match its sha256 in manifest.json (corrupt artifact)")
    return "verified"


def _read_manifest(d: Path) -> dict:
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LawError(f"{d.name}: manifest.json is unreadable ({type(err).__name__})") from None
    if not isinstance(manifest, dict):
        raise LawError(f"{d.name}: manifest.json is not a JSON object")
    return manifest


def check_laws(models_dir: str | Path | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """``(loadable law names, [(name, reason)] for the bad ones)``: every law is verified and loaded."""
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for name in list_laws(models_dir):
        try:
            load_law(name, models_dir)
        except LawError as err:
            bad.append((name, str(err)))
        else:
            good.append(name)
    return good, bad


def resolve_law_dir(name_or_path: str | Path, models_dir: str | Path | None = None) -> Path:
    """A law name (directory under ``models/``) or a path -> its directory, with a did-you-mean error."""
    p = Path(name_or_path)
    if (p / "manifest.json").exists():
        return p
    base = _base(models_dir)
    q = base / str(name_or_path)
    if (q / "manifest.json").exists():
        return q
    names = list_laws(base)
    if not names:
        raise LawError(f"no law '{name_or_path}': {base} holds no laws")
    raise LawError(f"{unknown_name_message(name_or_path, names, 'law')} (laws of {base})")


def list_laws(models_dir: str | Path | None = None) -> list[str]:
    """Names of the law directories (with a manifest) under ``models_dir``; hidden ones (a save in progress)
    are left out. A ``models_dir`` that is not a readable directory is an :class:`ArtifactError`."""
    base = _base(models_dir)
    if not base.exists():
        return []
    try:
        entries = list(base.iterdir())
    except OSError as err:
        raise ArtifactError(
            f"laws directory {base}: {err.strerror or err} (give the directory that holds the laws)"
        ) from None
    return sorted(p.name for p in entries if not p.name.startswith(".") and (p / "manifest.json").exists())


def read_manifest(name_or_path: str | Path, models_dir: str | Path | None = None) -> dict:
    """A law's manifest as a dict; an unreadable or non-JSON manifest is a :class:`LawError` naming the law."""
    return _read_manifest(resolve_law_dir(name_or_path, models_dir))


def _load_skops(path: Path, expected: str):
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=path)
    bad = sorted(set(untrusted) - set(TRUSTED_SKOPS_TYPES))
    if bad:
        raise LawError(f"refusing to load {path}: it contains untrusted types {bad}")
    obj = sio.load(path, trusted=list(TRUSTED_SKOPS_TYPES))
    got = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if got != expected:
        raise LawError(f"refusing {path}: expected a {expected}, found {got}")
    return obj


def load_law(name_or_path: str | Path, models_dir: str | Path | None = None) -> Law:
    """Load an artifact by name (under ``models/``) or directory. Never executes code from the files."""
    d = resolve_law_dir(name_or_path, models_dir)
    verify_law(d)
    try:
        return _load_verified(d)
    except LawError:
        raise
    except Exception as err:  # a truncated/garbled file of an unverified artifact
        raise LawError(f"{d.name}: corrupt artifact ({type(err).__name__}: {err})") from None


def _load_verified(d: Path) -> Law:
    manifest = _read_manifest(d)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise LawError(f"{d}: schema_version {manifest.get('schema_version')} != {SCHEMA_VERSION}")
    est_name = manifest.get("estimator")
    if est_name not in ESTIMATOR_CLASSES:
        raise LawError(f"{d}: unknown estimator '{est_name}'; known: {sorted(ESTIMATOR_CLASSES)}")
    cls = ESTIMATOR_CLASSES[est_name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    params = manifest.get("params", {})
    extra = sorted(set(params) - allowed)
    if extra:
        raise LawError(f"{d}: parameters {extra} are not parameters of '{est_name}' ({sorted(allowed)})")
    for k, v in params.items():
        if not isinstance(v, (str, int, float, bool, list, type(None))):
            raise LawError(f"{d}: parameter {k} has a non-JSON value")
    if isinstance(params.get("features"), list):
        params = {**params, "features": tuple(params["features"])}
    est = cls(**params)
    est.set_state(json.loads((d / "params.json").read_text()))
    if est.storage == "skops":
        est.model_ = _load_skops(d / "model.skops", _SKOPS_MODEL_TYPES[est_name])
    training = manifest.get("training", {})
    settings = manifest.get("feature_settings", {})
    _check_feature_settings(settings, d)
    return Law(
        name=manifest.get("name", d.name),
        estimator=est,
        kind=manifest.get("kind", "zoo"),
        preset=manifest.get("preset", est_name),
        data_hash=training.get("hash", ""),
        n_rows=int(training.get("rows", 0)),
        source=training.get("source", ""),
        cv=manifest.get("cv", {}),
        created=manifest.get("created", ""),
        qscale_version=manifest.get("qscale_version", ""),
        path=d,
        feature_settings=settings,
    )


#: The records ``feature_settings`` may hold, and the keys each may have.
FEATURE_SETTING_KEYS = {
    "eval": ("corpus", "split", "protocol", "seq_len", "max_tokens", "add_bos"),
    "calibration": ("corpus", "n_samples", "seq_len", "seed", "add_bos"),
}


def _check_feature_settings(settings: object, d: Path) -> None:
    """A manifest's ``feature_settings``: records named in :data:`FEATURE_SETTING_KEYS` of JSON scalars."""
    if not isinstance(settings, dict):
        raise LawError(f"{d.name}: manifest 'feature_settings' is not an object")
    for rec, value in settings.items():
        if rec not in FEATURE_SETTING_KEYS:
            raise LawError(
                f"{d.name}: unknown feature_settings record {rec!r}; valid: {', '.join(FEATURE_SETTING_KEYS)}"
            )
        if value is None:
            continue
        if not isinstance(value, dict):
            raise LawError(f"{d.name}: feature_settings.{rec} is not an object")
        bad = sorted(set(value) - set(FEATURE_SETTING_KEYS[rec]))
        if bad:
            raise LawError(
                f"{d.name}: feature_settings.{rec} has unknown key(s) {bad}; "
                f"valid: {', '.join(FEATURE_SETTING_KEYS[rec])}"
            )
        for k, v in value.items():
            if k in ("corpus", "split", "protocol"):
                ok = isinstance(v, str)
            elif k == "add_bos":  # forced BOS layout, or null: the model's convention
                ok = v is None or isinstance(v, bool)
            else:  # a count; max_tokens may be null (all windows)
                ok = (isinstance(v, int) and not isinstance(v, bool)) or (k == "max_tokens" and v is None)
            if not ok:
                raise LawError(f"{d.name}: feature_settings.{rec}.{k} has an invalid value {v!r}")
