"""The collection steps of ``qscale demo`` (the demo itself is :mod:`qscale.workflows.demo`).

* :func:`ensure_zoo`: train the tiny zoo's missing models (``qscale.lm.zoo_train.train_zoo``; reused when present);
* :func:`collect_into`: collect a demo sweep (``data/sweeps/demo_zoo.yaml``, ``data/sweeps/demo_real.yaml``) into
  the demo's own run store, resuming: finished runs are reused and the line printed says how many.

Nothing here writes outside the store it is given and the zoo directory (``$QSCALE_ZOO_DIR``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class DemoError(ValueError):
    """A demo step that cannot run, with what to do about it (one line, exit 2 in the CLI)."""


def fmt_s(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def ensure_zoo(echo: Callable[[str], None], step: str, preset: str = "tiny") -> float:
    """Train the zoo preset's missing models; returns the seconds spent (0 when all were present)."""
    from qscale.lm.zoo import list_zoo
    from qscale.lm.zoo_train import train_zoo

    missing = [e.name for e in list_zoo(preset=preset) if e.status != "trained"]
    if not missing:
        echo(f"{step} zoo: all {preset} models present (reused)")
        return 0.0
    echo(f"{step} zoo: training {len(missing)} {preset} model(s): {', '.join(missing)}")
    t0 = time.perf_counter()

    def progress(spec: Any, path: Path, seconds: float) -> None:
        echo(f"      {spec.name}: {fmt_s(seconds)} -> {path}")

    train_zoo(preset, progress=progress)
    return time.perf_counter() - t0


def collect_into(
    spec_path: Path,
    store: Path,
    echo: Callable[[str], None],
    step: str,
    progress: bool = False,
) -> dict[str, Any]:
    """Collect ``spec_path`` into ``store`` (finished runs reused); returns the counts and the seconds.

    Raises :class:`DemoError` when the spec is invalid, the collection was interrupted or nothing finished.
    """
    from qscale.collect.runner import collect
    from qscale.collect.spec import SpecError, load_spec
    from qscale.collect.store import RunStore, StoreError

    try:
        spec = load_spec(spec_path)
    except SpecError as err:
        raise DemoError(
            "; ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()).replace(":;", ":")
        ) from None
    try:
        with RunStore(store) as st:
            before = st.counts().get("ok", 0)
            echo(
                f"{step} collect {spec_path} ({len(spec.models)} model ref(s) x {len(spec.formats)} formats) into {store}"
            )
            res = collect(spec, st, progress=progress)
            counts = st.counts()
    except StoreError as err:
        raise DemoError(str(err)) from None
    resumed = " (resumed: finished runs reused)" if res.n_skipped and before else ""
    echo(f"      {res.n_ok} runs measured, {res.n_skipped} already there, {res.n_error} failed, "
         f"in {fmt_s(res.seconds)}{resumed}")  # fmt: skip
    if res.stopped:
        raise DemoError(
            "collection interrupted; run the same `qscale demo` again to continue where it stopped"
        )
    if counts.get("ok", 0) == 0:
        raise DemoError(f"no finished runs in {store}; see `qscale runs list --store {store}`")
    return {
        "spec": str(spec_path),
        "store": str(store),
        "planned": res.n_planned,
        "measured": res.n_ok,
        "reused": res.n_skipped,
        "failed": res.n_error,
        "failures": list(res.failures),
        "seconds": res.seconds,
        "runs_per_min": res.runs_per_min,
    }
