"""Sweep specs: which (model x format x method x calibration x eval) runs to collect, as data.

A spec is a YAML (or TOML) file::

    name: demo
    models: [zoo:tiny, checkpoints/*/]          # zoo names, a zoo preset, paths, globs
    formats: [int8, int4-g128, all-4bit]        # format specs or named sets (qscale.formats.format_set)
    methods: [rtn, {name: gptq, params: {damp: 0.01}}]
    calibration: {corpus: enwiki_gensim, n_samples: 32, seq_len: 256, seed: 0}   # a list = an axis
    eval: {corpus: enwiki_gensim, split: test, protocol: stride, seq_len: 256, max_tokens: 16384}
    features: [n_nonembed, sqnr_db, weight_stats]

:func:`load_spec` parses and validates the whole file before anything runs; every problem is reported
with its field path (``formats[3]: unknown format 'int33' (did you mean int3?)``), all at once.
:func:`plan` expands a spec into :class:`PlannedRun` s. Calibration only multiplies runs of methods that
need calibration (``Method.needs_calibration``); RTN runs once per format.

A run's key (:func:`run_key`) hashes its configuration (:meth:`PlannedRun.config`): the model's identity, the
format, the method with its parameters, the method's calibration record, the eval record and the code version;
and the settings its features depend on (``Feature.settings`` in :mod:`qscale.features`) that the rest does not
hold already (the eval record is there), under ``"feature_settings"``, each only when it differs from its
default. A run measured with default feature settings thus keeps the key it had before the settings were part
of it (the committed stores); changing a default needs a :data:`COLLECT_VERSION` bump.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qscale.features import LandscapeSettings, get_feature, measured_features
from qscale.registry import unknown_name_message

#: Bumped when the collection loop changes what a run measures (keys of older runs then differ). 2 (2026-12-04):
#: BOS follows the model's declared convention (scripts/rekey_runs.py re-keys a store).
COLLECT_VERSION = "2"


class SpecError(ValueError):
    """A sweep spec is invalid; ``errors`` lists every problem as ``"field.path: message"``."""

    def __init__(self, errors: Sequence[str], source: str | None = None):
        self.errors = list(errors)
        where = f" in {source}" if source else ""
        super().__init__(f"invalid sweep spec{where}:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration tokens: ``qscale.corpora.calibration_batch(tok, corpus, n_samples, seq_len, seed, add_bos)``.

    ``add_bos`` as in :class:`EvalSpec`: None (the model's convention) is left out of the record and the key.
    """

    corpus: str = "enwiki_gensim"
    n_samples: int = 32
    seq_len: int = 256
    seed: int = 0
    add_bos: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["add_bos"] is None:
            d.pop("add_bos")
        return d


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation settings passed to ``qscale.corpora.get_windows`` / ``qscale.measure``.

    ``batch_size`` changes speed only, so it is not part of a run's identity (:meth:`key_dict`). ``add_bos``:
    None (the default, left out of the key) starts every window with BOS when the model's convention does
    (:func:`qscale.corpora.windows.model_adds_bos`); True / False force it.
    """

    corpus: str = "enwiki_gensim"
    split: str = "test"
    protocol: str = "stride"
    seq_len: int = 256
    max_tokens: int | None = 16384
    batch_size: int = 8
    add_bos: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("batch_size")
        if d["add_bos"] is None:
            d.pop("add_bos")
        return d

    def window_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``get_windows`` / ``evaluate``: corpus, split, protocol, seq_len, max_tokens."""
        return self.key_dict()


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: models resolved to references, formats to canonical specs, methods resolved."""

    name: str
    models: tuple[str, ...]
    formats: tuple[str, ...]
    methods: tuple[Any, ...]  # qscale.quantize.MethodSpec
    calibrations: tuple[CalibrationSpec, ...]
    evals: tuple[EvalSpec, ...]
    features: tuple[str, ...] = ()
    source: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PlannedRun:
    """One run before it is measured. Its key needs the model's identity, known once facts are read."""

    model: str
    format: str
    method: Any  # qscale.quantize.MethodSpec
    calibration: CalibrationSpec | None
    eval: EvalSpec
    #: ``((setting, record), ...)``: the feature settings in the key (:func:`key_settings`; defaults left out)
    settings: tuple[tuple[str, Any], ...] = ()

    def config(self, identity: str) -> dict[str, Any]:
        """The canonical configuration of this run for a model of the given identity (hashed into run_key)."""
        from qscale import __version__

        config = {
            "model": identity,
            "format": self.format,
            "method": self.method.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "eval": self.eval.key_dict(),
            "code_version": f"{__version__}+collect{COLLECT_VERSION}",
        }
        if self.settings:
            config["feature_settings"] = {
                name: rec.to_dict() if isinstance(rec, CalibrationSpec) else asdict(rec)
                for name, rec in self.settings
            }
        return config

    def key(self, identity: str) -> str:
        return run_key(self.config(identity))

    def describe(self) -> str:
        calib = (
            ""
            if self.calibration is None
            else f" calib={self.calibration.corpus}x{self.calibration.n_samples}"
        )
        return f"{self.model} | {self.format} | {self.method}{calib}"


def canonical_json(obj: Any) -> str:
    """Sorted-key, no-whitespace JSON: the byte string a run key hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def run_key(config: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of ``config``.

    >>> run_key({"a": 1}) == run_key({"a": 1.0}) or True  # int and float differ in JSON; keep types stable
    True
    """
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------
# Feature settings: how a run's data-dependent features were measured
# --------------------------------------------------------------------------------------------------------

#: The default record of each feature setting (``qscale.features.SETTINGS``): a setting at its default is left
#: out of the run key. ``eval`` is the run's own eval record, which the key holds anyway.
SETTING_DEFAULTS: dict[str, Any] = {
    "eval": EvalSpec(),
    "calibration": CalibrationSpec(),
    "landscape": LandscapeSettings(),
}
#: Settings already in a run's configuration (``PlannedRun.config``): the features use the run's eval record.
_IN_CONFIG = frozenset({"eval"})


def key_settings(features: Sequence[str], records: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The feature settings that go into the key of a run measuring ``features``: each setting one of them
    depends on (``Feature.settings``) that the run's configuration does not hold already, with its record in
    ``records`` (``{"calibration": CalibrationSpec, ...}``; a setting without one is at its default), left out
    when it equals its default (:data:`SETTING_DEFAULTS`). Sorted by setting name."""
    names = sorted({s for n in features for s in get_feature(n).settings} - _IN_CONFIG)
    out = []
    for name in names:
        rec = records.get(name, SETTING_DEFAULTS[name])
        if rec != SETTING_DEFAULTS[name]:
            out.append((name, rec))
    return tuple(out)


def sweep_settings(spec: SweepSpec) -> dict[str, Any]:
    """The records of the feature settings a sweep's features are measured with, besides each run's eval
    record: the calibration batch of :func:`feature_calibration`; the landscape settings are the defaults."""
    return {"calibration": feature_calibration(spec) or CalibrationSpec(), "landscape": LandscapeSettings()}


def feature_calibration(spec: SweepSpec) -> CalibrationSpec | None:
    """The calibration record whose batch a sweep's data-dependent features get as ``ctx.calib``: the first
    one (the default :class:`CalibrationSpec` when the spec names none)."""
    return spec.calibrations[0] if spec.calibrations else None


def feature_settings(
    eval_settings: EvalSpec | Mapping[str, Any], calibration: CalibrationSpec | Mapping[str, Any] | None
) -> dict[str, Any]:
    """How a run's data-dependent features are measured: ``{"eval": ..., "calibration": ...}``.

    ``eval`` is the run's evaluation record without ``batch_size`` (the windows ``float_nll`` / ``float_bpb``
    are scored on; part of the run key), ``calibration`` the calibration record whose batch the features got
    (``None`` when the run measured no data-dependent feature). Stored with each run as
    ``provenance["feature_settings"]``, and with a law fitted on such runs as its manifest's ``feature_settings``.
    """
    ev = eval_settings.key_dict() if isinstance(eval_settings, EvalSpec) else dict(eval_settings)
    if isinstance(calibration, CalibrationSpec):
        calibration = calibration.to_dict()
    return {"eval": ev, "calibration": None if calibration is None else dict(calibration)}


def recorded_feature_settings(row: Mapping[str, Any]) -> dict[str, Any]:
    """The feature settings of a stored run: ``provenance["feature_settings"]`` when recorded.

    Runs stored before the record get their own eval settings and the default :class:`CalibrationSpec`,
    which is what the committed stores' data-dependent features used (``data/sweeps/demo.yaml`` names no
    calibration; the other committed sweeps measure no data-dependent feature).
    """
    prov = row.get("provenance") or {}
    rec = prov.get("feature_settings") if isinstance(prov, Mapping) else None
    if isinstance(rec, Mapping):
        return feature_settings(rec.get("eval") or {}, rec.get("calibration"))
    config = row.get("config") or {}
    return feature_settings(config.get("eval") or {}, CalibrationSpec())


# --------------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------------

_TOP_KEYS = ("name", "models", "formats", "methods", "calibration", "eval", "features")


#: A sweep spec is a few kilobytes; anything larger than this is refused before it is parsed.
MAX_SPEC_BYTES = 1 << 20


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` without anchors or aliases (no alias bomb can expand; specs never need them)."""
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise SpecError(
                    [
                        f"YAML aliases (*{event.anchor}) are not allowed in a sweep spec (line {event.start_mark.line + 1})"
                    ]
                )
            event = self.peek_event()
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                raise SpecError(
                    [
                        f"YAML anchors (&{anchor}) are not allowed in a sweep spec (line {event.start_mark.line + 1})"
                    ]
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def _read_file(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            [f"spec file {path} is {size} bytes; a sweep spec may be at most {MAX_SPEC_BYTES} bytes"]
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        import tomllib

        return tomllib.loads(text)
    return _safe_yaml(text)


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a YAML/TOML spec file; raises :class:`SpecError` listing every problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([f"spec file not found: {p}"])
    try:
        raw = _read_file(p)
    except SpecError as err:
        raise SpecError(err.errors, str(p)) from None
    except Exception as err:  # yaml/toml syntax errors
        raise SpecError([f"cannot parse {p.name}: {err}"], str(p)) from None
    return parse_spec(raw, source=str(p))


def parse_spec(raw: Any, source: str | None = None) -> SweepSpec:
    """Validate a spec given as a mapping (the parsed YAML) and resolve it into a :class:`SweepSpec`."""
    errors: list[str] = []
    if not isinstance(raw, Mapping):
        raise SpecError(["the spec must be a mapping with keys " + ", ".join(_TOP_KEYS)], source)
    for key in raw:
        if key not in _TOP_KEYS:
            errors.append(f"{key}: {unknown_name_message(key, _TOP_KEYS, 'key', n=3)}")
    for key in ("models", "formats"):
        if key not in raw:
            errors.append(f"{key}: required")

    name = raw.get("name") or (Path(source).stem if source else "sweep")
    models = _parse_models(raw.get("models", []), errors)
    formats = _parse_formats(raw.get("formats", []), errors)
    methods = _parse_methods(raw.get("methods", ["rtn"]), errors)
    calibs = _parse_records(raw.get("calibration", {}), CalibrationSpec, "calibration", errors)
    evals = _parse_records(raw.get("eval", {}), EvalSpec, "eval", errors)
    features = _parse_features(raw.get("features", []), errors)
    if errors:
        raise SpecError(errors, source)
    return SweepSpec(
        name=str(name),
        models=tuple(models),
        formats=tuple(formats),
        methods=tuple(methods),
        calibrations=tuple(calibs),
        evals=tuple(evals),
        features=tuple(features),
        source=source,
    )


def _as_list(value: Any, path: str, errors: list[str]) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | Mapping):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    errors.append(f"{path}: expected a list, got {type(value).__name__}")
    return []


def zoo_names() -> tuple[list[str], dict[str, list[str]]]:
    """(model names, {preset: model names}) of the zoo."""
    from qscale.lm.zoo import ZOO_PRESETS
    from qscale.lm.zoo import zoo_names as names

    return names(), {k: [s.name for s in v] for k, v in ZOO_PRESETS.items()}


def _parse_models(value: Any, errors: list[str]) -> list[str]:
    out: list[str] = []
    names: list[str] | None = None
    presets: dict[str, list[str]] = {}
    for i, item in enumerate(_as_list(value, "models", errors)):
        path = f"models[{i}]"
        if not isinstance(item, str) or not item.strip():
            errors.append(
                f"{path}: expected a model reference (zoo:NAME, panel:NAME, a path or a glob), got {item!r}"
            )
            continue
        item = item.strip()
        if item.startswith("zoo:"):
            if names is None:
                names, presets = zoo_names()
            zname = item[4:]
            if zname in presets:
                out.extend(f"zoo:{n}" for n in presets[zname])
            elif zname in names:
                out.append(item)
            else:
                choices = [*presets, *names]
                errors.append(f"{path}: {unknown_name_message(zname, choices, 'zoo model or preset', n=3)}")
        elif item.startswith("panel:"):
            from qscale.lm.loading import LoadError
            from qscale.lm.panel import get_entry

            try:
                out.append(f"panel:{get_entry(item[6:]).name}")
            except LoadError as err:
                errors.append(f"{path}: {err}")
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                errors.append(f"{path}: glob {item!r} matches nothing")
            out.extend(matches)
        elif not Path(os.path.expanduser(item)).exists():
            errors.append(f"{path}: no such model path {item!r} (zoo models are written zoo:NAME)")
        else:
            out.append(os.path.expanduser(item))
    if not out and not any(e.startswith("models") for e in errors):
        errors.append("models: at least one model is needed")
    seen: list[str] = []
    for m in out:
        if m not in seen:
            seen.append(m)
    return seen


def _parse_formats(value: Any, errors: list[str]) -> list[str]:
    from qscale.formats import expand_formats

    out: list[str] = []
    for i, item in enumerate(_as_list(value, "formats", errors)):
        path = f"formats[{i}]"
        if not isinstance(item, str):
            errors.append(f"{path}: expected a format spec string, got {item!r}")
            continue
        try:
            specs = expand_formats(item)
        except Exception as err:
            errors.append(f"{path}: {str(err).strip() or repr(err)}")
            continue
        out += [sp for sp in specs if sp not in out]
    if not out and not any(e.startswith("formats") for e in errors):
        errors.append("formats: at least one format is needed")
    return out


def _parse_methods(value: Any, errors: list[str]) -> list[Any]:
    from qscale.quantize import MethodSpec

    out: list[Any] = []
    for i, item in enumerate(_as_list(value, "methods", errors)):
        path = f"methods[{i}]"
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, Mapping):
            extra = sorted(set(item) - {"name", "params"})
            if extra:
                errors.append(f"{path}: unknown key(s) {extra}; a method is {{name, params}}")
                continue
            name, params = item.get("name"), item.get("params") or {}
            if not isinstance(params, Mapping):
                errors.append(f"{path}.params: expected a mapping, got {type(params).__name__}")
                continue
        else:
            errors.append(f"{path}: expected a method name or {{name, params}}, got {item!r}")
            continue
        try:
            spec = MethodSpec.of(str(name), params)
        except Exception as err:
            errors.append(f"{path}: {err}")
            continue
        if spec not in out:
            out.append(spec)
    if not out and not any(e.startswith("methods") for e in errors):
        errors.append("methods: at least one method is needed")
    return out


def _parse_records(value: Any, cls: type, key: str, errors: list[str]) -> list[Any]:
    """Parse ``calibration`` / ``eval`` (one mapping, or a list of them = an axis) into ``cls`` records."""
    fields = list(cls.__dataclass_fields__)
    defaults = cls()
    single = isinstance(value, Mapping)
    items = [value] if single else _as_list(value, key, errors)
    if not items:
        items = [{}]
    out = []
    for i, item in enumerate(items):
        path = key if single else f"{key}[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{path}: expected a mapping with keys {', '.join(fields)}")
            continue
        n_errors = len(errors)
        kwargs: dict[str, Any] = {}
        for k, v in item.items():
            if k not in fields:
                errors.append(f"{path}.{k}: {unknown_name_message(k, fields, 'key', n=3)}")
            elif k == "max_tokens" and v is None:
                kwargs[k] = None
            elif k == "add_bos":
                if v is not None and not isinstance(v, bool):
                    errors.append(
                        f"{path}.{k}: expected true, false or null (the model's convention), got {v!r}"
                    )
                else:
                    kwargs[k] = v
            elif isinstance(getattr(defaults, k), int) or k == "max_tokens":
                minimum = 0 if k == "seed" else 1
                if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                    kind = "a non-negative" if minimum == 0 else "a positive"
                    errors.append(f"{path}.{k}: expected {kind} integer, got {v!r}")
                else:
                    kwargs[k] = v
            elif not isinstance(v, str):
                errors.append(f"{path}.{k}: expected a string, got {v!r}")
            else:
                kwargs[k] = v
        rec = cls(**kwargs)
        _check_record(rec, path, errors)
        if len(errors) == n_errors and rec not in out:
            out.append(rec)
    return out


def _check_record(rec: Any, path: str, errors: list[str]) -> None:
    """Names in a calibration / eval record: corpus, split, protocol."""
    from qscale.corpora import corpus_names
    from qscale.corpora.calibration import calibration_corpora
    from qscale.corpora.windows import PROTOCOLS

    valid = calibration_corpora() if isinstance(rec, CalibrationSpec) else corpus_names()
    if rec.corpus not in valid:
        errors.append(f"{path}.corpus: {unknown_name_message(rec.corpus, valid, 'corpus', n=3)}")
    if isinstance(rec, EvalSpec):
        splits = ["train", "validation", "test"]
        if rec.split not in splits:
            errors.append(f"{path}.split: {unknown_name_message(rec.split, splits, 'split', n=3)}")
        if rec.protocol not in PROTOCOLS:
            errors.append(
                f"{path}.protocol: {unknown_name_message(rec.protocol, PROTOCOLS, 'protocol', n=3)}"
            )


def _parse_features(value: Any, errors: list[str]) -> list[str]:
    """Feature names a sweep measures: the registry's measured features (not the given ones)."""
    known = [f.name for f in measured_features()]
    out: list[str] = []
    for i, item in enumerate(_as_list(value, "features", errors)):
        if not isinstance(item, str) or item not in known:
            errors.append(f"features[{i}]: {unknown_name_message(str(item), known, 'feature', n=3)}")
        elif item not in out:
            out.append(item)
    return out


# --------------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------------


def _needs_calibration(method_spec: Any) -> bool:
    """Whether this method *with these parameters* needs calibration tokens (act-quant with static scales or
    GPTQ weights does; with dynamic RTN it does not): ``Method.calibration_needed(params)``."""
    from qscale.quantize import get_method

    return bool(get_method(method_spec.name).calibration_needed(method_spec.param_dict))


def plan(spec: SweepSpec, limit: int | None = None) -> list[PlannedRun]:
    """Expand a spec into runs, grouped by model (the loop loads each model once).

    Order: model, eval, format, method, calibration. Methods that do not need calibration get
    ``calibration=None`` and run once per format. ``limit`` keeps the first N runs.
    """
    runs: list[PlannedRun] = []
    settings = key_settings(spec.features, sweep_settings(spec))
    for model in spec.models:
        for ev in spec.evals:
            for fmt in spec.formats:
                for method in spec.methods:
                    calibs: Sequence[CalibrationSpec | None] = (
                        spec.calibrations if _needs_calibration(method) else (None,)
                    )
                    for calib in calibs:
                        runs.append(PlannedRun(model, fmt, method, calib, ev, settings))
    return runs[:limit] if limit is not None else runs


def group_by_model(runs: Sequence[PlannedRun]) -> dict[str, list[PlannedRun]]:
    """``{model reference: [runs]}`` in first-seen order."""
    out: dict[str, list[PlannedRun]] = {}
    for r in runs:
        out.setdefault(r.model, []).append(r)
    return out
