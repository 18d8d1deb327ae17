"""The crash-safe run store: one SQLite row per (model, format, method, calibration, eval) run.

* SQLite in WAL mode, ``synchronous=FULL``; each finished run is committed in its own transaction, so a
  killed sweep loses at most the run in flight, and a reader (``qscale runs list``) never blocks the writer.
* A run is identified by ``run_key`` = sha256 of the canonical JSON of its configuration
  (:func:`qscale.collect.spec.run_key`); writing the same key again updates the row, so every configured
  run is present exactly once. A finished ("ok") row is never overwritten by an "error" row.
* The schema is versioned (table ``schema_version``); :data:`MIGRATIONS` upgrades older files in place.

``RunStore(path).to_frame()`` flattens the JSON columns into the DataFrame documented in
docs/interfaces.md (model, family, n_params, ..., format, method, bits_per_element, ..., nll, dnll, ...).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qscale.paths import repo_path


def default_store() -> Path:
    """The repository's run store, ``data/runs.sqlite`` (:func:`qscale.paths.repo_path`)."""
    return repo_path("data/runs.sqlite", option="--store")


STATUSES = ("ok", "error")


class StoreError(RuntimeError):
    """The store file is unusable (newer schema, not a qscale store, unknown run key, ...)."""


# --------------------------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------------------------


def _v1(conn: sqlite3.Connection) -> None:
    """Version 1: the runs table."""
    conn.execute(
        """
        CREATE TABLE runs (
            run_key        TEXT PRIMARY KEY,
            status         TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            model          TEXT NOT NULL,
            model_ref      TEXT NOT NULL,
            model_identity TEXT,
            format         TEXT NOT NULL,
            method         TEXT NOT NULL,
            config         TEXT NOT NULL,
            facts          TEXT,
            format_info    TEXT,
            metrics        TEXT,
            features       TEXT,
            timings        TEXT,
            provenance     TEXT,
            error          TEXT,
            created_utc    TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX runs_status ON runs (status)")
    conn.execute("CREATE INDEX runs_model ON runs (model)")


def _v2(conn: sqlite3.Connection) -> None:
    """Version 2: attempt counts and update times on runs; a cache of model identities.

    ``model_cache`` maps a model reference + a cheap signature of its files (sizes, mtimes) to the model's
    identity and facts, so a re-run can skip a finished model without loading it.
    """
    conn.execute("ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE runs ADD COLUMN updated_utc TEXT")
    conn.execute("UPDATE runs SET updated_utc = created_utc")
    conn.execute(
        """
        CREATE TABLE model_cache (
            model_ref   TEXT NOT NULL,
            signature   TEXT NOT NULL,
            identity    TEXT NOT NULL,
            facts       TEXT,
            updated_utc TEXT NOT NULL,
            PRIMARY KEY (model_ref, signature)
        )
        """
    )


#: ``MIGRATIONS[i]`` upgrades a store from version i to i + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2)
SCHEMA_VERSION = len(MIGRATIONS)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=True)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --------------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------------

_ROW_FIELDS = (
    "run_key",
    "status",
    "model",
    "model_ref",
    "model_identity",
    "format",
    "method",
    "config",
    "facts",
    "format_info",
    "metrics",
    "features",
    "timings",
    "provenance",
    "error",
)
_JSON_FIELDS = ("config", "facts", "format_info", "metrics", "features", "timings", "provenance")


class RunStore:
    """A SQLite run store (created and migrated on open).

    >>> with RunStore(tmp / "runs.sqlite") as store:            # doctest: +SKIP
    ...     store.put({"run_key": "ab12", "status": "ok", "model": "m", "model_ref": "m",
    ...                "format": "int4", "method": "rtn", "config": {...}, "metrics": {"nll": 3.2}})
    ...     store.status_of(["ab12", "cd34"])
    {'ab12': 'ok'}
    """

    def __init__(self, path: str | Path | None = None, *, readonly: bool = False):
        self.path = Path(path) if path is not None else default_store()
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise StoreError(
                f"no run store at {self.path}; collect runs first (qscale collect SPEC --store ...)"
            )
        _check_foreign(self.path, readonly=readonly)
        if readonly:  # a true read-only open: nothing written, no lock taken (many readers at once are fine)
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=60.0,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
        self._conn.row_factory = sqlite3.Row
        try:
            _check_schema(self._conn, self.path, readonly=readonly)
        except BaseException:
            self._conn.close()
            raise
        self._conn.execute("PRAGMA busy_timeout = 60000")
        if readonly:
            try:
                self._check_readable_version()
            except BaseException:
                self._conn.close()
                raise
            return
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":  # e.g. a file on a filesystem without shared memory
            raise StoreError(f"{self.path}: cannot switch the store to WAL mode (got {mode!r})")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._migrate()

    # ---- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        for attempt in range(20):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as err:  # locked beyond busy_timeout: back off
                if "locked" not in str(err) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    # ---- schema ----------------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return _read_version(self._conn)

    def _check_readable_version(self) -> None:
        """Read-only: the store must already be at this qscale's schema (migrating would write to it)."""
        version = _read_version(self._conn)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this qscale's {SCHEMA_VERSION}; "
                "upgrade qscale to read it"
            )
        if version == 0:
            raise StoreError(f"{self.path} has a runs table but no schema version: not a qscale store")
        raise StoreError(
            f"{self.path} has schema version {version}, older than this qscale's {SCHEMA_VERSION}; open it once "
            "for writing to migrate it (e.g. `qscale collect SPEC --store` it)"
        )

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = _read_version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this qscale's {SCHEMA_VERSION}; "
                    "upgrade qscale to read it"
                )
            if version == 0:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "runs" in tables:
                    raise StoreError(
                        f"{self.path} has a runs table but no schema version: not a qscale store"
                    )
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
            # run leases (two `qscale collect` on one store): an extra table, not a schema bump, so older
            # qscale versions still open the store; readers (runs list, fit) do not add it
            if not self.readonly:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS run_leases (run_key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                    "host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL)"
                )
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    # ---- writing ---------------------------------------------------------------------------------------
    def put(self, row: Mapping[str, Any]) -> bool:
        """Insert or update one run atomically; returns False when an "ok" row would be replaced by an error.

        ``row`` has the keys of the runs table (``run_key, status, model, model_ref, format, method, config``
        required; JSON columns given as Python objects).
        """
        missing = [
            k
            for k in ("run_key", "status", "model", "model_ref", "format", "method", "config")
            if k not in row
        ]
        if missing:
            raise StoreError(f"run row lacks {missing}")
        unknown = sorted(set(row) - set(_ROW_FIELDS))
        if unknown:
            raise StoreError(f"run row has unknown field(s) {unknown}; valid: {', '.join(_ROW_FIELDS)}")
        if row["status"] not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, got {row['status']!r}")
        values = [(_dumps(row.get(k)) if k in _JSON_FIELDS else row.get(k)) for k in _ROW_FIELDS]
        now = _utc_now()
        cols = ", ".join(_ROW_FIELDS)
        marks = ", ".join("?" for _ in _ROW_FIELDS)
        updates = ", ".join(f"{k} = excluded.{k}" for k in _ROW_FIELDS if k != "run_key")
        with self._write() as conn:
            cur = conn.execute(
                f"INSERT INTO runs ({cols}, created_utc, updated_utc, attempts) VALUES ({marks}, ?, ?, 1) "
                f"ON CONFLICT (run_key) DO UPDATE SET {updates}, updated_utc = excluded.updated_utc, "
                "attempts = runs.attempts + 1 "
                "WHERE runs.status != 'ok' OR excluded.status = 'ok'",
                (*values, now, now),
            )
            return cur.rowcount > 0

    # ---- leases ----------------------------------------------------------------------------------------
    def claim(self, run_key: str, owner: str, done_statuses: Iterable[str] = ("ok",)) -> str:
        """Claim a run before measuring it: ``"claimed"``, ``"done"`` (a row with one of ``done_statuses``
        exists) or ``"leased"`` (a live other collection holds it). A lease is stale, and taken over, when
        its process is gone (same host) or its heartbeat is older than :data:`LEASE_TTL_S`."""
        done = tuple(done_statuses)
        with self._write() as conn:
            if done:
                marks = ", ".join("?" for _ in done)
                r = conn.execute(
                    f"SELECT 1 FROM runs WHERE run_key = ? AND status IN ({marks})", (run_key, *done)
                ).fetchone()
                if r is not None:
                    return "done"
            lease = conn.execute(
                "SELECT owner, host, pid, heartbeat FROM run_leases WHERE run_key = ?", (run_key,)
            ).fetchone()
            if lease is not None and lease["owner"] != owner and _lease_live(lease):
                return "leased"
            conn.execute(
                "INSERT OR REPLACE INTO run_leases (run_key, owner, host, pid, heartbeat) VALUES (?, ?, ?, ?, ?)",
                (run_key, owner, _HOST, os.getpid(), time.time()),
            )
            return "claimed"

    def heartbeat(self, owner: str) -> None:
        """Renew every lease of ``owner``."""
        with self._write() as conn:
            conn.execute("UPDATE run_leases SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def release(self, owner: str, run_key: str | None = None) -> None:
        """Drop ``owner``'s lease on ``run_key`` (all of its leases when None)."""
        with self._write() as conn:
            if run_key is None:
                conn.execute("DELETE FROM run_leases WHERE owner = ?", (owner,))
            else:
                conn.execute("DELETE FROM run_leases WHERE owner = ? AND run_key = ?", (owner, run_key))

    def leases(self) -> list[dict[str, Any]]:
        """Current lease rows (live or stale)."""
        return [dict(r) for r in self._conn.execute("SELECT * FROM run_leases ORDER BY run_key")]

    def remember_model(self, model_ref: str, signature: str, identity: str, facts: Mapping[str, Any]) -> None:
        """Cache a model's identity and facts under its reference and file signature."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO model_cache (model_ref, signature, identity, facts, updated_utc) "
                "VALUES (?, ?, ?, ?, ?)",
                (model_ref, signature, identity, _dumps(dict(facts)), _utc_now()),
            )

    def cached_model(self, model_ref: str, signature: str) -> tuple[str, dict[str, Any]] | None:
        """``(identity, facts)`` cached for this reference and signature, or None."""
        r = self._conn.execute(
            "SELECT identity, facts FROM model_cache WHERE model_ref = ? AND signature = ?",
            (model_ref, signature),
        ).fetchone()
        return None if r is None else (r["identity"], _loads(r["facts"]) or {})

    # ---- reading ---------------------------------------------------------------------------------------
    def status_of(self, keys: Iterable[str]) -> dict[str, str]:
        """``{run_key: status}`` for the keys present in the store."""
        keys = list(keys)
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT run_key, status FROM runs WHERE run_key IN ({', '.join('?' for _ in chunk)})"
            out.update({r[0]: r[1] for r in self._conn.execute(q, chunk)})
        return out

    def keys(self, status: str | None = None) -> set[str]:
        """All run keys (of one status, if given)."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, got {status!r}")
        q = "SELECT run_key FROM runs" + (" WHERE status = ?" if status else "")
        return {r[0] for r in self._conn.execute(q, (status,) if status else ())}

    def ok_feature_columns(self) -> dict[str, set[str]]:
        """``{run_key: feature columns stored}`` for every "ok" run."""
        out: dict[str, set[str]] = {}
        for r in self._conn.execute("SELECT run_key, features FROM runs WHERE status = 'ok'"):
            feats = _loads(r[1])
            out[r[0]] = set(feats) if isinstance(feats, dict) else set()
        return out

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """``{status: number of runs}``."""
        return {r[0]: r[1] for r in self._conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")}

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs as dicts (JSON columns decoded), oldest first."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"status must be one of {STATUSES}, got {status!r}")
        q = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY created_utc, rowid"
        return [self._decode(r) for r in self._conn.execute(q, (status,) if status else ())]

    def get(self, key: str) -> dict[str, Any]:
        """The run whose key is ``key`` or starts with it (a unique prefix of at least 4 characters)."""
        if len(key) < 4:
            raise StoreError("give at least 4 characters of a run key")
        found = self._conn.execute(
            "SELECT * FROM runs WHERE run_key >= ? AND run_key < ? LIMIT 3", (key, key + "\uffff")
        ).fetchall()
        if not found:
            raise StoreError(f"no run with key {key!r} in {self.path}")
        if len(found) > 1:
            raise StoreError(
                f"run key prefix {key!r} is ambiguous: {', '.join(r['run_key'][:12] for r in found)}"
            )
        return self._decode(found[0])

    @staticmethod
    def _decode(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        for k in _JSON_FIELDS:
            d[k] = _loads(d.get(k))
        return d

    def to_frame(self, status: str | None = None, detail: bool = False, superseded: bool = False) -> Any:
        """The runs as a flat pandas DataFrame.

        A model reference whose weights changed (a retrained zoo model, an overwritten checkpoint) has
        runs under two identities; only the runs of its most recently measured identity are returned,
        unless ``superseded=True``.

        Columns: :data:`FRAME_COLUMNS` (docs/interfaces.md), one column per feature column (NaN for a run that
        did not measure it), ``status``, ``run_key``.
        Every numeric column of this default frame is either an input a law may use or its target, so
        it can be handed to ``qscale.laws`` as is. ``detail=True`` appends bookkeeping and secondary
        outcomes (``float_bpb, dppl, dbpb, n_tokens, method_sqnr_db``, calibration and eval settings,
        ``time_*`` timings, ``error``, ``attempts``, ...), which must not be used as law inputs.
        """
        rows = self.rows(status)
        if not superseded:
            rows = drop_superseded(rows)
        return rows_to_frame(rows, detail=detail)

    def export(
        self, out: str | Path, fmt: str | None = None, status: str | None = None, detail: bool = False
    ) -> Path:
        """Write :meth:`to_frame` to ``out`` as parquet or csv (from ``fmt`` or the file suffix)."""
        out = Path(out)
        fmt = (fmt or out.suffix.lstrip(".")).lower()
        if fmt not in ("parquet", "csv"):
            raise StoreError(f"unknown export format {fmt!r}; valid: parquet, csv")
        frame = self.to_frame(status, detail=detail)
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            frame.to_parquet(out, index=False)
        else:
            frame.to_csv(out, index=False)
        return out


#: A lease whose heartbeat is older than this is stale (a collection on another host that died).
LEASE_TTL_S = 2 * 3600.0
_HOST = socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _lease_live(lease: Mapping[str, Any]) -> bool:
    if time.time() - float(lease["heartbeat"]) > LEASE_TTL_S:
        return False
    return not (lease["host"] == _HOST and not _pid_alive(int(lease["pid"])))


_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables a qscale store may hold (any version); a file with tables but none of these is someone else's.
QSCALE_TABLES = frozenset({"runs", "schema_version", "model_cache", "run_leases"})


def _empty_store(path: Path) -> StoreError:
    return StoreError(
        f"{path} is empty, not a run store: collect runs into it first (qscale collect SPEC --store {path})"
    )


def _check_foreign(path: Path, readonly: bool = False) -> None:
    """Refuse an existing non-empty file that is not SQLite, before SQLite touches it; opened read-only, an empty
    file too (reading must not turn it into a store). Opened for writing, an empty file becomes a store."""
    if not path.exists():
        return
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a run store (SQLite file)")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as err:
        raise StoreError(f"cannot read the run store {path}: {err.strerror or err}") from None
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite file: refusing to use it as a run store")
    if not head and readonly:
        raise _empty_store(path)


def _check_schema(conn: sqlite3.Connection, path: Path, readonly: bool = False) -> None:
    """Refuse a SQLite file that has tables but none of qscale's, and read-only one without tables (nothing is
    written before this check)."""
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise StoreError(
            f"{path} is not a usable SQLite file ({err}): refusing to use it as a run store"
        ) from None
    if not tables and readonly:
        raise _empty_store(path)
    if tables and not (tables & QSCALE_TABLES):
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{path} is a SQLite file of something else (tables: {shown}), not a qscale run store: refusing to "
            "add qscale tables to it"
        )


def _read_version(conn: sqlite3.Connection) -> int:
    try:
        r = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as err:
        if "no such table" not in str(err):  # e.g. locked: a real error, not "no version"
            raise
        return 0
    return int(r[0]) if r and r[0] is not None else 0


# --------------------------------------------------------------------------------------------------------
# Flattening
# --------------------------------------------------------------------------------------------------------

#: The leading columns of :meth:`RunStore.to_frame`, in order (docs/interfaces.md): what every run's record holds
#: (its model and format, the model's facts, the format's facts, the run's metrics). The features a run measured
#: follow (sorted; ``sqnr_db``, ``weight_stats_*``, ... as :mod:`qscale.features` names them), NaN where a run
#: did not measure one: a missing feature is never filled from another column (``method_sqnr_db``, the SQNR of
#: the method's own weights, is a ``detail`` column of its own).
FRAME_COLUMNS = (
    "model",
    "family",
    "n_params",
    "n_nonembed",
    "train_tokens",
    "format",
    "method",
    "eval_corpus",
    "bits_per_element",
    "element_bits",
    "fmt_family",
    "float_nll",
    "nll",
    "dnll",
    "ppl",
    "float_ppl",
    "bpb",
    "kld",
    "top1",
)
_FACT_COLUMNS = ("n_layers", "d_model", "vocab_size", "tied_embeddings", "identity")
_METRIC_COLUMNS = ("float_bpb", "dppl", "dbpb", "n_tokens", "n_bytes", "method_sqnr_db")


def _num(v: Any) -> Any:
    return math.nan if v is None else v


def flatten_row(row: Mapping[str, Any], detail: bool = False) -> dict[str, Any]:
    """One stored run as a flat dict of scalars (see :data:`FRAME_COLUMNS` and :meth:`RunStore.to_frame`)."""
    facts = row.get("facts") or {}
    finfo = row.get("format_info") or {}
    metrics = row.get("metrics") or {}
    features = row.get("features") or {}
    config = row.get("config") or {}
    out: dict[str, Any] = {
        "model": row["model"],
        "family": facts.get("family"),
        "n_params": _num(facts.get("n_params")),
        "n_nonembed": _num(facts.get("n_nonembed")),
        "train_tokens": _num(facts.get("train_tokens")),
        "format": row["format"],
        "method": row["method"],
        "eval_corpus": (config.get("eval") or {}).get("corpus"),
        "bits_per_element": _num(finfo.get("bits_per_element")),
        "element_bits": _num(finfo.get("element_bits")),
        "fmt_family": finfo.get("family"),
    }
    for k in ("float_nll", "nll", "dnll", "ppl", "float_ppl", "bpb", "kld", "top1"):
        out[k] = _num(metrics.get(k))
    for k in features:
        if k not in out:
            out[k] = _num(features[k])
    out["status"] = row["status"]
    out["run_key"] = row["run_key"]
    if not detail:
        return out
    for k in _FACT_COLUMNS:
        out[k] = facts.get(k)
    for k in _METRIC_COLUMNS:
        out[k] = _num(metrics.get(k))
    method = config.get("method") or {}
    out["method_params"] = json.dumps(method.get("params") or {}, sort_keys=True)
    calib = config.get("calibration") or {}
    for k in ("corpus", "n_samples", "seq_len", "seed", "add_bos"):
        out[f"calib_{k}"] = calib.get(k)
    ev = config.get("eval") or {}
    # eval_corpus is a core column; eval_add_bos is None unless the sweep forced the layout
    for k in ("split", "protocol", "seq_len", "max_tokens", "add_bos"):
        out[f"eval_{k}"] = ev.get(k)
    out["bos"] = metrics.get(
        "bos"
    )  # whether the windows started with BOS (None: a run from before it was kept)
    for k, v in (row.get("timings") or {}).items():
        out[f"time_{k}"] = _num(v)
    out["model_ref"] = row.get("model_ref")
    out["error"] = row.get("error")
    out["attempts"] = row.get("attempts")
    out["created_utc"] = row.get("created_utc")
    return out


def drop_superseded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, per model reference, the runs of the identity measured last (rows in store order).

    Rows without an identity (a model that failed to load) are kept.
    """
    current: dict[str, str] = {}
    for r in rows:  # oldest first: the last identity seen per reference wins
        if r.get("model_identity"):
            current[r["model_ref"]] = r["model_identity"]
    return [
        r for r in rows if not r.get("model_identity") or current.get(r["model_ref"]) == r["model_identity"]
    ]


def rows_to_frame(rows: Iterable[Mapping[str, Any]], detail: bool = False) -> Any:
    """Flatten stored runs into a DataFrame; an empty store gives an empty frame with the leading columns."""
    import pandas as pd

    flat = [flatten_row(r, detail) for r in rows]
    if not flat:
        return pd.DataFrame(columns=[*FRAME_COLUMNS, "status", "run_key"])
    frame = pd.DataFrame(flat)
    # Runs may carry different feature sets: features go between the fixed leading columns and
    # status/run_key whichever row introduced them.
    features = sorted(set(rows_features(flat)) - set(FRAME_COLUMNS))
    extra = [c for c in frame.columns if c not in (*FRAME_COLUMNS, *features, "status", "run_key")]
    return frame[[*FRAME_COLUMNS, *features, "status", "run_key", *extra]]


def rows_features(flat: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    for r in flat:
        keys = list(r)
        yield from keys[len(FRAME_COLUMNS) : keys.index("status")]
