"""Models for the service: only from roots the operator allows, loaded one at a time, a few kept in memory.

Naming (:class:`ModelRoots`): ``zoo:NAME`` (a trained zoo model under the zoo root), ``panel:NAME`` (a built
panel model under the panel root), or ``NAME`` / ``SUB/NAME`` / ``SUB/file.gguf`` relative to one of the
``--model-dir`` roots (searched in the order given). Absolute paths, ``~``, ``..``, backslashes, empty parts
and symlinks that lead out of their root are refused, and so is anything that is not a checkpoint; every
refusal gives the same message, so the answers tell nothing about the server's disk.

Loading (:class:`ModelPool`): a readers-writer lock makes a load exclusive (transformers' loading patches
process-wide state, e.g. meta-device initialisation; two loads at once, or a load during a forward pass, is
what crashed the service) while feature computations share it; each model also has its own lock, since
feature code may change a model's state while it measures. Loaded models are kept in a small LRU keyed by
the checkpoint's real path and its files' sizes and modification times (a rewritten checkpoint is reloaded).

Admission (:class:`WorkQueue`): at most ``max_workers`` model-backed predictions run at once, at most
``max_queue`` more wait; beyond that :class:`Busy` (the app answers 503 with Retry-After). A prediction that
does not finish within ``time_limit`` seconds raises :class:`Busy` as well; its work still counts against the
cap until it ends, so a slow model cannot pile up work behind the limit.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("qscale.service")

T = TypeVar("T")

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
MAX_NAME = 256
#: How many entries GET /api/models lists at most.
MAX_LISTED = 500


class ModelRefused(ValueError):
    """A model name the service will not load; its message is the same whatever the reason."""


class ModelLoadFailed(ValueError):
    """A model under an allowed root that could not be loaded (the reason goes to the server log only)."""


class Busy(RuntimeError):
    """The service is at its concurrency cap or a prediction ran past its time limit (-> 503 + Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def refusal(name: str) -> str:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return (
        f"model {shown!r} is not available on this server: give zoo:NAME, panel:NAME or the name of a "
        "checkpoint under one of the server's model directories (GET /api/models lists them)"
    )


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the name the client gave, the real path and a key that changes with the files."""

    name: str
    path: Path
    key: tuple[Any, ...]


def _safe_parts(rel: str) -> list[str] | None:
    if not rel or len(rel) > MAX_NAME or "\\" in rel or "\x00" in rel or rel.startswith(("/", "~")):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or not _PART.match(p) for p in parts):
        return None
    return parts


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([str(path), str(root)]) == str(root)
    except ValueError:
        return False


def _weight_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))


def _checkpoint_files(path: Path, meta: str | None = None) -> list[Path] | None:
    """The files that make ``path`` a loadable checkpoint (config + weights, or the .gguf), else None."""
    if path.is_file():
        return [path] if path.suffix == ".gguf" else None
    if not path.is_dir() or not (path / "config.json").is_file():
        return None
    if meta is not None and not (path / meta).is_file():
        return None
    weights = _weight_files(path)
    return [path / "config.json", *weights] if weights else None


class ModelRoots:
    """The directories models may come from, and the mapping from client names to checkpoints in them."""

    def __init__(
        self,
        model_dirs: Iterable[str | Path] = (),
        zoo_root: str | Path | None = None,
        panel_root: str | Path | None = None,
    ) -> None:
        from qscale.lm.loading import default_zoo_root
        from qscale.lm.panel import default_panel_root

        self.model_dirs = [Path(d).expanduser().resolve() for d in model_dirs]
        self.zoo_root = Path(zoo_root if zoo_root is not None else default_zoo_root()).expanduser().resolve()
        self.panel_root = (
            Path(panel_root if panel_root is not None else default_panel_root()).expanduser().resolve()
        )

    def resolve(self, name: str) -> ModelRef:
        """The checkpoint ``name`` stands for; :class:`ModelRefused` (one message for every reason) if none."""
        from qscale.lm.loading import PANEL_META, ZOO_META

        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise ModelRefused(refusal(str(name)[:MAX_NAME]))
        candidates: list[tuple[Path, str | None, list[str]]] = []
        if name.startswith("zoo:"):
            candidates.append((self.zoo_root, ZOO_META, [name[4:]]))
        elif name.startswith("panel:"):
            candidates.append((self.panel_root, PANEL_META, [name[6:]]))
        else:
            candidates += [(root, None, [name]) for root in self.model_dirs]
        for root, meta, (rel,) in candidates:
            parts = _safe_parts(rel)
            if parts is None or (meta is not None and len(parts) != 1):
                continue
            try:
                real = root.joinpath(*parts).resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if not _inside(real, root) or real == root:
                continue
            files = _checkpoint_files(real, meta)
            if files is None:
                continue
            try:
                stamps = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
            except OSError:
                continue
            return ModelRef(name=name, path=real, key=(str(real), stamps))
        raise ModelRefused(refusal(name))

    def available(self) -> list[dict[str, str]]:
        """The names this server can load (zoo, panel, then model directories), at most :data:`MAX_LISTED`."""
        from qscale.lm.loading import PANEL_META, ZOO_META

        out: list[dict[str, str]] = []

        def add(name: str, source: str) -> bool:
            out.append({"name": name, "source": source})
            return len(out) >= MAX_LISTED

        for root, prefix, meta, source in (
            (self.zoo_root, "zoo:", ZOO_META, "zoo"),
            (self.panel_root, "panel:", PANEL_META, "panel"),
        ):
            for d in _children(root):
                ok = _PART.match(d.name) and _inside(d.resolve(), root) and _checkpoint_files(d, meta)
                if ok and add(prefix + d.name, source):
                    return out
        for root in self.model_dirs:
            for d in _children(root):
                for p in [d, *(_children(d) if d.is_dir() else [])]:
                    rel = p.relative_to(root).as_posix()
                    if _safe_parts(rel) is None or not _inside(p.resolve(), root):
                        continue
                    if _checkpoint_files(p) and add(rel, "model-dir"):
                        return out
        return out


def _children(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except OSError:
        return []


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (loads are not starved)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class _Entry:
    lm: Any
    lock: threading.Lock


class ModelPool:
    """Loaded models, at most ``size`` of them (least recently used goes first), loaded one at a time."""

    def __init__(self, size: int = 2, loader: Callable[[str], Any] | None = None) -> None:
        if size < 1:
            raise ValueError("the model cache holds at least one model")
        self.size = size
        self._loader = loader or _load
        self._models: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _models
        self._rw = RWLock()  # write: a load; read: work on a loaded model
        self.loads = 0  # how many loads happened (tests and /api/health)

    @contextmanager
    def use(self, ref: ModelRef) -> Iterator[Any]:
        """The loaded model of ``ref``, held for exclusive use by this thread inside the ``with``."""
        entry = self._get(ref)
        with self._rw.read(), entry.lock:
            yield entry.lm

    def _get(self, ref: ModelRef) -> _Entry:
        with self._lock:
            entry = self._models.get(ref.key)
            if entry is not None:
                self._models.move_to_end(ref.key)
                return entry
        with self._rw.write():
            with self._lock:  # another thread may have loaded it while this one waited
                entry = self._models.get(ref.key)
                if entry is not None:
                    self._models.move_to_end(ref.key)
                    return entry
            try:
                lm = self._loader(str(ref.path))
            except Exception as err:  # the reason may name server paths: log it, tell the client less
                log.warning("loading %s (%s) failed: %s: %s", ref.name, ref.path, type(err).__name__, err)
                raise ModelLoadFailed(
                    f"model {ref.name!r} could not be loaded ({type(err).__name__}; the server log has the "
                    "reason)"
                ) from None
            entry = _Entry(lm=lm, lock=threading.Lock())
            with self._lock:
                self.loads += 1
                self._models[ref.key] = entry
                self._models.move_to_end(ref.key)
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            return entry

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


def _load(path: str) -> Any:
    from qscale.lm import load

    return load(path)


class WorkQueue:
    """Runs model-backed work on ``max_workers`` threads with at most ``max_queue`` waiting, within a time limit."""

    def __init__(self, max_workers: int = 2, max_queue: int = 8, time_limit: float = 120.0) -> None:
        if max_workers < 1 or max_queue < 0 or not time_limit > 0:
            raise ValueError("need max_workers >= 1, max_queue >= 0 and time_limit > 0")
        self.max_workers = max_workers
        self.capacity = max_workers + max_queue
        self.time_limit = float(time_limit)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="qscale-predict")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a worker thread; :class:`Busy` when full or past the time limit."""
        with self._lock:
            if self._pending >= self.capacity:
                raise Busy(
                    f"the server is busy: {self._pending} model-backed predictions are running or waiting "
                    f"(at most {self.capacity}); retry shortly",
                    retry_after=2,
                )
            self._pending += 1
        try:
            future = self._executor.submit(fn)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _f: self._done())
        try:
            return future.result(timeout=self.time_limit)
        except cf.TimeoutError:
            future.cancel()  # not started yet: never runs; running: finishes in the background
            raise Busy(
                f"the prediction did not finish within the server's time limit of {self.time_limit:g} s; "
                "a model that was being loaded stays cached, so a retry may be faster",
                retry_after=max(1, int(self.time_limit // 4)),
            ) from None

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
