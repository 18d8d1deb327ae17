"""The Ray backend: one task per model; tasks return rows, the driver is the store's single writer.

Each task runs :func:`qscale.collect.loop.collect_model` on one model and returns ``(rows, summary)``.
A task whose worker dies (killed, out of memory, node lost) is retried by Ray (``max_retries``), and so
is a task that raises (``retry_exceptions``): its runs are measured again from the start of the model, and
the store's run keys make a retried run land in the same row. ``num_gpus=1`` per task when the cluster
has GPUs, so each model gets its own device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qscale.collect.spec import CalibrationSpec, PlannedRun

#: Ray retries of a model task whose worker died or that raised.
MAX_RETRIES = 2


#: Fault injection for the retry test: when this variable names a directory, the first attempt of each
#: model task kills its own worker process (``os._exit``), leaving a marker file there; Ray must retry it.
FAULT_ENV = "QSCALE_TEST_KILL_WORKER_ONCE"


def _maybe_die_once(model_ref: str) -> None:
    fault_dir = os.environ.get(FAULT_ENV)
    if not fault_dir:
        return
    marker = Path(fault_dir) / hashlib.sha256(model_ref.encode()).hexdigest()[:16]
    if not marker.exists():
        marker.write_text(model_ref)
        os._exit(17)


def _model_task(
    model_ref: str,
    runs: Sequence[PlannedRun],
    features: Sequence[str],
    skip: frozenset[str],
    device: str,
    feature_calibration: CalibrationSpec | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from qscale.collect.loop import collect_model

    _maybe_die_once(model_ref)
    rows: list[dict[str, Any]] = []
    summary = collect_model(
        model_ref, runs, features, skip_keys=skip, on_row=rows.append, device=device,
        feature_calibration=feature_calibration,
    )  # fmt: skip
    return rows, summary


def collect_ray(
    todo: dict[str, list[PlannedRun]],
    features: Sequence[str],
    skip: frozenset[str],
    on_row: Callable[[dict[str, Any]], None],
    on_summary: Callable[[dict[str, Any], int], None],
    should_stop: Callable[[], bool],
    on_task_error: Callable[[str, BaseException], None],
    *,
    address: str | None = None,
    device: str = "auto",
    feature_calibration: CalibrationSpec | None = None,
) -> None:
    """Run one Ray task per model of ``todo``; hand each returned row to ``on_row`` as tasks finish.

    Connects to ``address`` (``"auto"``, ``"ray://host:10001"``, ...) or starts a local cluster when
    none is running. On stop, tasks not yet finished are cancelled (their models are measured next time).
    """
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("the ray backend needs Ray: pip install 'qscale[ray]'") from err

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        use_gpu = gpus >= 1 and device in ("auto", "cuda")
        task_device = "cuda" if use_gpu else "cpu"
        task = ray.remote(num_gpus=1 if use_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=True)(
            _model_task
        )
        skip_ref = ray.put(skip)
        pending = {
            task.remote(ref, runs, tuple(features), skip_ref, task_device, feature_calibration): ref
            for ref, runs in todo.items()
        }
        while pending:
            if should_stop():
                for obj in pending:
                    ray.cancel(obj)
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for obj in ready:
                ref = pending.pop(obj)
                try:
                    rows, summary = ray.get(obj)
                except Exception as err:  # retries exhausted: report, go on with the other models
                    on_task_error(ref, err)
                    continue
                for row in rows:
                    on_row(row)
                on_summary(summary, len(todo[ref]))
    finally:
        if started:
            ray.shutdown()
