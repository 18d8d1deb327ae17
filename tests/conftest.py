"""Shared fixtures; area-specific fixtures belong in ``tests/<area>/conftest.py``.

* ``$QSCALE_ZOO_DIR`` is set for the session to ``zoo_root`` if it was unset.
* ``zoo_root``: one directory for the shared tokenizer, the token streams and the tiny zoo. It is
  ``$QSCALE_ZOO_DIR`` when set (CI can reuse one training across runs), else ``<pytest cache>/qscale-zoo``
  (kept between runs, shared by pytest-xdist workers). Everything in it is keyed by recipe hashes, so a change
  of recipe retrains instead of reusing stale files.
* ``shared_tokenizer``: the zoo's byte-level BPE (vocab 8192), trained once (a few seconds) and cached.
* ``tiny_zoo``: the ``tiny`` preset (5 families x 3 sizes), trained once per cache (minutes on 2 CPU cores;
  under a file lock, so xdist workers wait for one training) -> ``{name: checkpoint dir}``.
* ``micro_model`` / ``micro_llama``: a fresh randomly initialised GPT-2 / Llama (d 32, 2 layers, seq 64) with
  the shared tokenizer, as a ``qscale.lm.LoadedModel`` (no training; cheap; safe to modify).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point ``$QSCALE_ZOO_DIR`` at the test zoo (unless set), so ``load("zoo:tiny-...")`` and ``qscale demo``
    inside tests find the models ``tiny_zoo`` trained instead of training into ``~/.cache``."""
    if not os.environ.get("QSCALE_ZOO_DIR") and getattr(config, "cache", None) is not None:
        os.environ["QSCALE_ZOO_DIR"] = str(config.cache.mkdir("qscale-zoo"))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One intra-op thread per xdist worker: with -n 2 on 2 cores, 2 x 2 threads make small-op tests
        # (autograd on the tiny models) several times slower.
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("QSCALE_ZOO_DIR")
    if env:
        root = Path(env).expanduser()
    elif getattr(request.config, "cache", None) is not None:
        root = Path(request.config.cache.mkdir("qscale-zoo"))
    else:  # cache provider disabled: the base temp dir shared by xdist workers
        root = tmp_path_factory.getbasetemp().parent / "qscale-zoo"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def shared_tokenizer(zoo_root: Path) -> Any:
    from qscale.lm.tokenizer import shared_tokenizer as _shared

    return _shared(zoo_root)


@pytest.fixture(scope="session")
def tiny_zoo(zoo_root: Path) -> dict[str, Path]:
    import torch

    from qscale.lm.locking import exclusive
    from qscale.lm.zoo import preset_hash
    from qscale.lm.zoo_train import train_zoo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per xdist worker: no oversubscription, same weights everywhere
    try:
        with exclusive(zoo_root / f".tiny-{preset_hash('tiny')}.lock"):
            return train_zoo("tiny", root=zoo_root)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def micro_model(shared_tokenizer: Any) -> Any:
    from qscale.lm.zoo import random_model

    return random_model("gpt2", shared_tokenizer)


@pytest.fixture
def micro_llama(shared_tokenizer: Any) -> Any:
    from qscale.lm.zoo import random_model

    return random_model("llama", shared_tokenizer)
