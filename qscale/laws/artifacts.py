"""Law artifacts: ``models/<name>/`` with ``manifest.json``, ``params.json`` and, for tree ensembles and
Gaussian processes, ``model.skops``. Nothing is ever pickled and loading never runs code from the artifact:

* the estimator class is looked up by *name* in :data:`qscale.laws.estimators.ESTIMATOR_CLASSES`
  (never imported from a path written in the file), and its constructor only gets JSON values whose keys
  are checked against the class's parameters;
* ``model.skops`` is loaded with an explicit trusted-types list (:data:`TRUSTED_SKOPS_TYPES`); a file
  naming any other type is refused before it is loaded, and the loaded object's type is checked.
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

from qscale.laws.estimators import ESTIMATOR_CLASSES, LawError, LawEstimator

SCHEMA_VERSION = 1

#: Default directory of shipped laws (repository root / models).
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

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
    }


def save_law(law: Law, directory: str | Path) -> Path:
    """Write the artifact; returns its directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    est = law.estimator
    if not hasattr(est, "features_"):
        raise LawError("cannot save an unfitted law")
    (d / "params.json").write_text(json.dumps(_jsonable(est.get_state()), indent=1) + "\n")
    skops_path = d / "model.skops"
    files = ["params.json"]
    if est.storage == "skops":
        import skops.io as sio

        sio.dump(est.model_, skops_path)
        files.append("model.skops")
    elif skops_path.exists():
        skops_path.unlink()
    manifest = manifest_of(law)
    manifest["files"] = {f: _sha256_file(d / f) for f in files}
    # the manifest goes last: a half-written artifact has no (or an old) manifest and fails verification
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    law.path = d
    return d


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
    base = Path(models_dir) if models_dir is not None else MODELS_DIR
    q = base / str(name_or_path)
    if (q / "manifest.json").exists():
        return q
    import difflib

    names = list_laws(base)
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f" -- did you mean '{close[0]}'?" if close else ""
    raise LawError(
        f"no law '{name_or_path}' (looked in {base}){hint}; available: {', '.join(names) or 'none'}"
    )


def list_laws(models_dir: str | Path | None = None) -> list[str]:
    base = Path(models_dir) if models_dir is not None else MODELS_DIR
    if not base.exists():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "manifest.json").exists())


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
    )
