"""The Ray backend: one task per model; tasks return rows, the driver is the store's single writer.

Each task runs :func:`qscale.collect.loop.collect_model` on one model and returns ``(rows, summary)``.
A task whose worker dies (killed, out of memory, node lost) is retried by Ray (``max_retries``), and so
is a task that raises (``retry_exceptions``): its runs are measured again from the start of the model, and
the store's run keys make a retried run land in the same row. ``num_gpus=1`` per task when the cluster
has GPUs, so each model gets its own device.

Leases: a task learns its runs' keys only once it has loaded its model (the key holds the model's identity),
and only the driver can reach the store (workers may be on other machines). So right before measuring a run
the task asks the driver, through a small broker actor, to claim it in the store's lease table, exactly as
the local backend does in-process; the driver answers while it waits for results. A run another collection
holds (or finished meanwhile) is skipped. The driver releases a run's lease when its row arrives, the
leases of a model whose task failed for good at once, and every lease of the collection when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from qscale.collect.spec import CalibrationSpec, PlannedRun

#: Ray retries of a model task whose worker died or that raised.
MAX_RETRIES = 2
#: How long a task waits for the driver to answer a claim before it gives up (the task then fails).
CLAIM_TIMEOUT_S = 600.0


class Claims(Protocol):
    """What the driver claims and releases runs with (:class:`qscale.collect.runner._Claims`)."""

    def claim(self, key: str) -> bool: ...  # True: claimed, measure it; False: skip it

    def release(self, key: str | None = None) -> None: ...


class _ClaimBroker:
    """A mailbox actor between the tasks (which ask to claim a run) and the driver (which claims in the store).

    Tasks call :meth:`ask` then poll :meth:`answer`; the driver takes the questions with :meth:`questions`
    and posts each verdict with :meth:`reply`.
    """

    def __init__(self) -> None:
        self._next = 0
        self._questions: dict[int, tuple[str, str]] = {}
        self._answers: dict[int, bool] = {}

    def ask(self, model_ref: str, key: str) -> int:
        self._next += 1
        self._questions[self._next] = (model_ref, key)
        return self._next

    def questions(self) -> list[tuple[int, str, str]]:
        out = [(i, ref, key) for i, (ref, key) in self._questions.items()]
        self._questions.clear()
        return out

    def reply(self, ident: int, measure: bool) -> None:
        self._answers[ident] = measure

    def answer(self, ident: int) -> bool | None:
        return self._answers.pop(ident, None)


class _BrokeredClaims:
    """``skip_keys`` of :func:`collect_model` inside a task: ``key in claims`` asks the driver via the broker."""

    def __init__(self, skip: frozenset[str], broker: Any, model_ref: str):
        self.skip, self.broker, self.model_ref = skip, broker, model_ref

    def __contains__(self, key: object) -> bool:
        if key in self.skip:
            return True
        import ray

        ident = ray.get(self.broker.ask.remote(self.model_ref, str(key)))
        deadline = time.monotonic() + CLAIM_TIMEOUT_S
        while True:
            measure = ray.get(self.broker.answer.remote(ident))
            if measure is not None:
                return not measure
            if time.monotonic() > deadline:
                raise TimeoutError(f"the driver did not answer the claim of run {str(key)[:12]} in time")
            time.sleep(0.02)

    def __iter__(self):
        return iter(self.skip)

    def __len__(self) -> int:
        return len(self.skip)


def _model_task(
    model_ref: str,
    runs: Sequence[PlannedRun],
    features: Sequence[str],
    skip: frozenset[str],
    device: str,
    feature_calibration: CalibrationSpec | None,
    broker: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from qscale.collect.loop import collect_model

    rows: list[dict[str, Any]] = []
    skip_keys = skip if broker is None else _BrokeredClaims(skip, broker, model_ref)
    summary = collect_model(
        model_ref, runs, features, skip_keys=skip_keys, on_row=rows.append, device=device,
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
    claims: Claims | None = None,
) -> None:
    """Run one Ray task per model of ``todo``; hand each returned row to ``on_row`` as tasks finish.

    Connects to ``address`` (``"auto"``, ``"ray://host:10001"``, ...) or starts a local cluster when
    none is running. On stop, tasks not yet finished are cancelled (their models are measured next time).
    With ``claims``, every run is claimed through it before a task measures it (module docstring); without,
    runs are not leased.
    """
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("the ray backend needs Ray: pip install 'qscale[ray]'") from err

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    claimed: dict[str, set[str]] = {ref: set() for ref in todo}  # per model: leased runs with no row yet
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        use_gpu = gpus >= 1 and device in ("auto", "cuda")
        task_device = "cuda" if use_gpu else "cpu"
        task = ray.remote(num_gpus=1 if use_gpu else 0, max_retries=MAX_RETRIES, retry_exceptions=True)(
            _model_task
        )
        broker = None if claims is None else ray.remote(num_cpus=0)(_ClaimBroker).remote()
        skip_ref = ray.put(skip)
        pending = {
            task.remote(ref, runs, tuple(features), skip_ref, task_device, feature_calibration, broker): ref
            for ref, runs in todo.items()
        }

        def serve_claims() -> None:
            if broker is None or claims is None:
                return
            for ident, ref, key in ray.get(broker.questions.remote()):
                measure = claims.claim(key)
                if measure:
                    claimed.setdefault(ref, set()).add(key)
                broker.reply.remote(ident, measure)

        while pending:
            if should_stop():
                for obj in pending:
                    ray.cancel(obj)
                break
            serve_claims()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.1 if broker is not None else 1.0)
            for obj in ready:
                ref = pending.pop(obj)
                try:
                    rows, summary = ray.get(obj)
                except Exception as err:  # retries exhausted: report, go on with the other models
                    if claims is not None:
                        for key in claimed.pop(ref, set()):
                            claims.release(key)
                    on_task_error(ref, err)
                    continue
                for row in rows:
                    claimed.get(ref, set()).discard(row["run_key"])
                    on_row(row)
                on_summary(summary, len(todo[ref]))
    finally:
        if started:
            ray.shutdown()
