"""Run a sweep into a store: the local backend (in-process) and the Ray backend (one task per model).

Both skip runs already finished ("ok") in the store, and runs that failed unless ``retry_failed``. The store
is written only by this process (the driver): local runs are committed one by one as they finish, Ray
tasks return their rows and the driver commits them. Ctrl-C (SIGINT) asks the loop to stop after the
current run; a second Ctrl-C interrupts at once.

Both backends claim each run in the store's lease table right before measuring it (the Ray tasks ask the
driver, see :mod:`qscale.collect.ray_backend`), so two ``qscale collect`` on one store never measure the same
run; a run's lease is released when its row is written, and all of a collection's leases when it ends.

Feature settings: a finished run is reused only if its features were measured the way the spec asks. The
run key already holds the eval settings (the windows ``float_nll`` is scored on); the calibration batch that
data-dependent features (cost "eval"/"hvp": ``top_eig``, ``qdir_*``, ...) get is recorded with each run
(``provenance["feature_settings"]``), and a finished run recorded with another one is measured again in place
(:func:`other_feature_settings`). Run keys do not change, so the committed stores keep theirs.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qscale.collect.loop import collect_model, model_signature
from qscale.collect.spec import (
    CalibrationSpec,
    PlannedRun,
    SweepSpec,
    feature_calibration,
    feature_settings,
    group_by_model,
    plan,
    recorded_feature_settings,
)
from qscale.collect.store import RunStore
from qscale.features import data_features

BACKENDS = ("local", "ray")


class CollectError(ValueError):
    """A bad collection request (unknown backend, Ray missing, ...)."""


@dataclass(frozen=True)
class CollectResult:
    """What a collection did: planned runs, newly measured ok/error rows, skipped runs, elapsed time."""

    n_planned: int
    n_ok: int
    n_error: int
    n_skipped: int
    n_models: int
    stopped: bool
    seconds: float
    load_seconds: float
    failures: tuple[str, ...] = ()
    #: finished runs measured again because they lacked features the spec asks for
    n_refilled: int = 0
    #: runs skipped because another live `qscale collect` on the same store holds them (counted in n_skipped)
    n_leased: int = 0
    #: finished runs measured again because their features were measured with other settings
    n_resettled: int = 0

    @property
    def runs_per_min(self) -> float:
        n = self.n_ok + self.n_error
        return 60.0 * n / self.seconds if self.seconds > 0 else 0.0


class StopFlag:
    """Set by the first SIGINT while installed (main thread only); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, notify: Callable[[str], None] | None = None):
        self._set = False
        self._notify = notify
        self._old: Any = None

    def __call__(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def _handler(self, signum: int, frame: Any) -> None:
        if self._set:
            raise KeyboardInterrupt
        self._set = True
        if self._notify is not None:
            self._notify("Stopping after the current run (Ctrl-C again to abort now)...")

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else is returned as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def skip_keys(
    store: RunStore,
    retry_failed: bool,
    features: Sequence[str] = (),
    feature_calibration: CalibrationSpec | None = None,
) -> frozenset[str]:
    """Keys not to measure again: every "ok" run, and every "error" run unless ``retry_failed``.

    Features are not part of the run key (adding one would re-key every stored run), so an "ok" run that
    lacks any of ``features`` is *not* skipped: it is measured again with them (see :func:`lacking_features`);
    nor is one whose data-dependent features were measured with another calibration than
    ``feature_calibration`` (:func:`other_feature_settings`).
    """
    ok = store.keys("ok")
    stale = lacking_features(store, features) | other_feature_settings(store, features, feature_calibration)
    return frozenset((ok - stale) | (set() if retry_failed else store.keys("error")))


def other_feature_settings(
    store: RunStore, features: Sequence[str], calibration: CalibrationSpec | None
) -> set[str]:
    """Keys of "ok" runs whose data-dependent features were measured with another calibration record.

    Empty when ``features`` has no data-dependent feature (then the calibration does not matter) or when
    ``calibration`` is None (not checked). Runs stored before the record count as measured with the default
    (:func:`qscale.collect.spec.recorded_feature_settings`).
    """
    if calibration is None or not data_features(features):
        return set()
    want = calibration.to_dict()
    return {r["run_key"] for r in store.rows("ok") if recorded_feature_settings(r)["calibration"] != want}


class _Claims:
    """``skip_keys`` for :func:`collect_model` that also claims runs in the store (a lease row).

    ``key in claims`` is True (skip) for a run in the static ``skip`` set, a run another collection finished
    meanwhile, or one a live other collection holds; otherwise the run is claimed and False is returned.
    The Ray backend asks the same question from its tasks through the driver (:meth:`claim`).
    """

    def __init__(
        self, store: RunStore, skip: frozenset[str], retry_failed: bool, refill: Collection[str] = frozenset()
    ):
        import os
        import uuid

        self.store, self.skip = store, skip
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.done = ("ok",) if retry_failed else ("ok", "error")
        self.n_leased = 0
        self.refill = refill  # "ok" runs measured again (missing features, other settings): not "done"

    def __contains__(self, key: object) -> bool:
        if key in self.skip:
            return True
        state = self.store.claim(str(key), self.owner, () if key in self.refill else self.done)
        if state == "leased":
            self.n_leased += 1
        return state != "claimed"

    def claim(self, key: str) -> bool:
        """Claim ``key`` for measuring: True when claimed, False when it is to be skipped."""
        return key not in self

    def release(self, key: str | None = None) -> None:
        """Release the lease on ``key`` (every lease of this collection when None)."""
        self.store.release(self.owner, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.skip)

    def __len__(self) -> int:
        return len(self.skip)


def _feature_present(name: str, columns: set[str], names: Sequence[str]) -> bool:
    """Whether feature ``name`` left a column: ``name`` itself or ``name_*`` (not a longer feature's)."""
    if name in columns:
        return True
    longer = [g for g in names if g != name and g.startswith(name + "_")]
    return any(
        c.startswith(name + "_") and not any(c == g or c.startswith(g + "_") for g in longer) for c in columns
    )


def lacking_features(store: RunStore, features: Sequence[str]) -> set[str]:
    """Keys of "ok" runs whose stored features lack at least one of ``features``."""
    if not features:
        return set()
    from qscale.features import list_features

    names = [f.name for f in list_features()]
    return {
        key
        for key, cols in store.ok_feature_columns().items()
        if not all(_feature_present(f, cols, names) for f in features)
    }


def _cached_pending(
    store: RunStore, model_ref: str, runs: Sequence[PlannedRun], skip: frozenset[str]
) -> list[PlannedRun] | None:
    """Runs of a model still to do, known from the store's model cache without loading; None if unknown."""
    sig = model_signature(model_ref)
    if sig is None:
        return None
    cached = store.cached_model(model_ref, sig)
    if cached is None:
        return None
    identity = cached[0]
    return [r for r in runs if r.key(identity) not in skip]


class _Progress:
    """Models / runs progress bars with ETA (rich), or nothing."""

    def __init__(self, enabled: bool, n_models: int, n_runs: int):
        self.enabled = enabled
        self._p: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("{task.description:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
            )
            self._models = self._p.add_task("models", total=n_models, note="")
            self._runs = self._p.add_task("runs", total=n_runs, note="")

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.stop()

    def run(self, n: int = 1, note: str = "") -> None:
        if self._p is not None:
            self._p.update(self._runs, advance=n, note=note)

    def model(self, note: str = "") -> None:
        if self._p is not None:
            self._p.update(self._models, advance=1, note=note)

    def print(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg)


def collect(
    spec: SweepSpec,
    store: RunStore,
    *,
    backend: str = "local",
    address: str | None = None,
    retry_failed: bool = False,
    limit: int | None = None,
    device: str = "auto",
    progress: bool = True,
    stop: StopFlag | None = None,
) -> CollectResult:
    """Measure every planned run of ``spec`` that the store does not have yet; rows go to ``store``."""
    if backend not in BACKENDS:
        from qscale.registry import unknown_name_message

        raise CollectError(unknown_name_message(backend, BACKENDS, "backend"))
    runs = plan(spec, limit=limit)
    groups = group_by_model(runs)
    feature_calib = feature_calibration(spec)
    # the calibration a run's data-dependent features get; None when the spec asks for none of them
    settings_calib = feature_calib if data_features(spec.features) else None
    stale = lacking_features(store, spec.features)
    resettled = other_feature_settings(store, spec.features, settings_calib) - stale
    skip = skip_keys(store, retry_failed, spec.features, settings_calib)
    t0 = time.perf_counter()
    counts = {"ok": 0, "error": 0, "skipped": 0, "load_s": 0.0, "refilled": 0, "resettled": 0}
    failures: list[str] = []

    todo: dict[str, list[PlannedRun]] = {}
    for ref, model_runs in groups.items():
        pending = _cached_pending(store, ref, model_runs, skip)
        if pending is not None and not pending:
            counts["skipped"] += len(model_runs)
        else:
            todo[ref] = model_runs

    with _Progress(progress, len(groups), len(runs)) as bar, stop or StopFlag() as flag:
        flag._notify = bar.print if progress else None
        bar_skipped = counts["skipped"]
        if bar_skipped:
            bar.run(bar_skipped, note="already in store")
            for _ in range(len(groups) - len(todo)):
                bar.model()

        claims = _Claims(store, skip, retry_failed, stale | resettled)

        def on_row(row: dict[str, Any]) -> None:
            config = row.get("config") or {}
            prov = dict(row.get("provenance") or {})
            prov["feature_settings"] = feature_settings(config.get("eval") or {}, settings_calib)
            store.put({**row, "provenance": prov})
            counts[row["status"]] += 1
            if row["run_key"] in stale:
                counts["refilled"] += 1
            elif row["run_key"] in resettled:
                counts["resettled"] += 1
            claims.release(row["run_key"])
            store.heartbeat(claims.owner)
            bar.run(1, note=f"{row['model']} {row['format']}")

        def on_summary(summary: dict[str, Any], n_runs: int) -> None:
            counts["skipped"] += summary["n_skipped"]
            counts["load_s"] += summary["load_s"]
            if summary["n_skipped"]:
                bar.run(summary["n_skipped"])
            if summary["identity"] is not None and summary["signature"] is not None:
                store.remember_model(
                    summary["model_ref"], summary["signature"], summary["identity"], summary["facts"]
                )
            if not summary["stopped"]:
                bar.model(note=summary["model_ref"])

        try:
            if backend == "local":
                dev = resolve_device(device)
                from qscale.collect.provenance import provenance

                prov = provenance(dev)
                for ref, model_runs in todo.items():
                    if flag():
                        break
                    summary = collect_model(
                        ref,
                        model_runs,
                        spec.features,
                        skip_keys=claims,
                        on_row=on_row,
                        should_stop=flag,
                        device=dev,
                        provenance=prov,
                        feature_calibration=feature_calib,
                    )
                    on_summary(summary, len(model_runs))
            else:
                from qscale.collect.ray_backend import collect_ray

                def on_task_error(ref: str, err: BaseException) -> None:
                    failures.append(f"{ref}: {type(err).__name__}: {err}")
                    bar.print(f"[red]model task failed after retries:[/red] {failures[-1]}")

                collect_ray(
                    todo,
                    spec.features,
                    skip,
                    on_row,
                    on_summary,
                    flag,
                    on_task_error,
                    address=address,
                    device=device,
                    feature_calibration=feature_calib,
                    claims=claims,
                )
        finally:
            claims.release()

    return CollectResult(
        n_planned=len(runs),
        n_ok=counts["ok"],
        n_error=counts["error"],
        n_skipped=counts["skipped"],
        n_models=len(groups),
        stopped=flag(),
        seconds=time.perf_counter() - t0,
        load_seconds=counts["load_s"],
        failures=tuple(failures),
        n_refilled=counts["refilled"],
        n_leased=claims.n_leased,
        n_resettled=counts["resettled"],
    )
