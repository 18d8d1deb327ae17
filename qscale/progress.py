"""Progress for qscale's long work, and silence for the bars third-party libraries would draw.

One live display on **stderr** (rich), so ``--json`` output on stdout stays clean JSON. Commands take
``--progress/--no-progress``; not giving it means on when stderr is a terminal (:func:`wanted`)::

    with Progress(wanted(progress)) as p:
        with p.step("load zoo:tiny-llama-m"):
            lm = load(model)
        for batch in p.track(batches, "float model"):
            ...

Library code below the commands calls :func:`track` (or takes a callback) and never opens a display of its own
while a command's is open: a nested :func:`track` adds a row to the open display.

transformers and huggingface_hub draw tqdm bars of their own ("Loading weights", "Writing model shards",
"Converting and de-quantizing GGUF tensors..."); :func:`quiet_third_party` turns those off where qscale calls
them (qscale shows its own progress instead).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: The help text of every command's ``--progress/--no-progress``.
PROGRESS_HELP = "Show progress on stderr (default: on when stderr is a terminal)."

#: The displays open now, innermost last (a nested Progress or track() reuses the outermost).
_OPEN: list[Progress] = []


def wanted(flag: bool | None) -> bool:
    """``--progress`` (True) / ``--no-progress`` (False) / not given (None: on when stderr is a terminal)."""
    if flag is not None:
        return bool(flag)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def active() -> bool:
    """Whether a command's display is open (library code then adds rows to it instead of opening one)."""
    return bool(_OPEN)


class Task:
    """One row of a display: a bar when the total is known, else a pulsing bar with the elapsed time."""

    def __init__(self, owner: Progress | None, task_id: Any):
        self._owner = owner
        self._id = task_id

    def advance(self, n: float = 1, note: str | None = None) -> None:
        if self._owner is not None:
            fields = {} if note is None else {"note": note}
            self._owner._rich.update(self._id, advance=n, **fields)

    def update(self, completed: float | None = None, total: float | None = None, note: str | None = None):
        if self._owner is not None:
            kw: dict[str, Any] = {}
            if completed is not None:
                kw["completed"] = completed
            if total is not None:
                kw["total"] = total
            if note is not None:
                kw["note"] = note
            self._owner._rich.update(self._id, **kw)

    def done(self, note: str | None = None) -> None:
        """Mark the row finished (a row of unknown total becomes 1/1)."""
        if self._owner is not None:
            rich = self._owner._rich
            task = next(t for t in rich.tasks if t.id == self._id)
            total = task.total if task.total is not None else max(task.completed, 1)
            rich.update(self._id, total=total, completed=total, **({} if note is None else {"note": note}))

    def callback(self) -> Callable[[int, int], None]:
        """``fn(done, total)``, the form of callbacks like :func:`qscale.measure.sensitivity.compute_profile`'s."""
        return lambda done, total: self.update(completed=done, total=total)


_NO_TASK = Task(None, None)


class Progress:
    """A rich progress display on stderr, or (disabled) nothing at all: every method is then a no-op."""

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self._rich: Any = None
        self._outer: Progress | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        if _OPEN:  # nested: rows go to the display already open
            self._outer = _OPEN[0]
            self._rich = self._outer._rich
        else:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as _Rich

            self._rich = _Rich(
                TextColumn("{task.description:<30}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(stderr=True),
            )
            self._rich.start()
        _OPEN.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        _OPEN.remove(self)
        if self._outer is None and self._rich is not None:
            self._rich.stop()

    # ---- rows ------------------------------------------------------------------------------------------
    def task(self, description: str, total: float | None = None, note: str = "") -> Task:
        """A new row (call inside ``with``)."""
        if self._rich is None:
            return _NO_TASK
        return Task(self, self._rich.add_task(description, total=total, note=note))

    def track(self, iterable: Iterable[Any], description: str, total: int | None = None) -> Iterator[Any]:
        """Yield from ``iterable``, one step of a new row per item."""
        if self._rich is None:
            yield from iterable
            return
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        row = self.task(description, total=total)
        for item in iterable:
            yield item
            row.advance()
        row.done()

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[Task]:
        """One piece of work without steps of its own (a model load, a solver): its row shows the time it takes."""
        row = self.task(description, total=None)
        yield row
        row.done()

    def print(self, message: str) -> None:
        """A line above the bars (stderr)."""
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)


def track(
    iterable: Iterable[Any], description: str, *, enabled: bool | None = None, total: int | None = None
) -> Iterator[Any]:
    """:meth:`Progress.track` for library code: a row in the command's open display, else a display of its own
    when ``enabled`` (None: when stderr is a terminal); ``enabled=False`` never shows anything."""
    if enabled is False:
        yield from iterable
        return
    if _OPEN:
        yield from _OPEN[0].track(iterable, description, total=total)
        return
    with Progress(wanted(enabled)) as p:
        yield from p.track(iterable, description, total=total)


# --------------------------------------------------------------------------------------------------------
# Third-party bars
# --------------------------------------------------------------------------------------------------------


def _disabled_tqdm(*args: Any, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    kwargs["disable"] = True
    return tqdm(*args, **kwargs)


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_saved_gguf_tqdm: Any = None


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """No tqdm bars from transformers / huggingface_hub while qscale loads, converts or saves models.

    transformers' own bars ("Loading weights", "Writing model shards") and the hub's honour
    ``disable_progress_bar``, which stays off for the process (qscale shows its own progress); the GGUF converter
    ("Converting and de-quantizing GGUF tensors...") calls ``tqdm.auto.tqdm`` directly, so inside this block its
    module's ``tqdm`` is a disabled one (thread-safe; restored when the last block exits). Warnings and errors
    are still printed.
    """
    global _quiet_depth, _saved_gguf_tqdm
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    hf_logging.disable_progress_bar()  # also huggingface_hub.utils.disable_progress_bars()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - a transformers without the GGUF loader
        gguf_utils = None
    with _QUIET_LOCK:
        if gguf_utils is not None and _quiet_depth == 0 and hasattr(gguf_utils, "tqdm"):
            _saved_gguf_tqdm = gguf_utils.tqdm
            gguf_utils.tqdm = _disabled_tqdm
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if gguf_utils is not None and _quiet_depth == 0 and _saved_gguf_tqdm is not None:
                gguf_utils.tqdm = _saved_gguf_tqdm
                _saved_gguf_tqdm = None


__all__ = ["PROGRESS_HELP", "Progress", "Task", "active", "quiet_third_party", "track", "wanted"]
