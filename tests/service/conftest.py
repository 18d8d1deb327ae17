"""Fixtures of the service tests: laws, checkpoints under allowed roots, and a live server on 127.0.0.1.

* ``public_models`` (module): a models/ directory with the public law ``public-svc``.
* ``zoo_models`` (session): a models/ directory with ``zoo-svc``, a zoo-kind law over ``sqnr_db`` fitted on a
  small synthetic table, so a prediction needs a model (loaded, and its weights quantized) but no training.
* ``model_dir`` (session): three untrained micro checkpoints (llama, gpt2, opt; ``random_model`` with the
  shared tokenizer) saved as ordinary HF directories, plus ``nested/llama`` -> served via ``--model-dir``.
* ``fake_zoo`` (session): a zoo root whose ``tiny-llama-s`` is the micro llama with a ``qscale_zoo.json``, so
  ``zoo:tiny-llama-s`` resolves without training the zoo.
* ``live_server(app)``: a context manager running uvicorn on 127.0.0.1 (a free port) -> base URL.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def public_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qscale.laws.fitting import fit_law, load_fit_data

    d = tmp_path_factory.mktemp("models")
    fit_law(load_fit_data(public=True), "size-bits", "public-svc", "table", models_dir=d)
    return d


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    import pandas as pd

    from qscale.laws.fitting import FitData, fit_law

    rng = np.random.default_rng(0)
    rows = []
    for fam in ("gpt2", "llama", "opt"):
        for size, n in (("s", 1e5), ("m", 4e5), ("l", 1.6e6)):
            for sq in (5.0, 10.0, 15.0, 20.0, 25.0):
                rows.append(
                    {"model": f"{fam}-{size}", "family": fam, "size": size, "n_nonembed": n, "sqnr_db": sq,
                     "bits_per_element": sq / 6, "element_bits": sq / 6, "fmt_family": "int",
                     "dnll": float(np.exp(-0.23 * sq) * (1 + 0.1 * rng.standard_normal()))}
                )  # fmt: skip
    d = tmp_path_factory.mktemp("zoo-models")
    fit_law(FitData("zoo", pd.DataFrame(rows), "synthetic"), "sqnr-only", "zoo-svc", "family", models_dir=d)
    return d


def _save(lm: Any, path: Path) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shared_tokenizer: Any) -> Path:
    from qscale.lm.zoo import random_model

    d = tmp_path_factory.mktemp("checkpoints")
    for fam in ("llama", "gpt2", "opt"):
        _save(random_model(fam, shared_tokenizer), d / fam)
    shutil.copytree(d / "llama", d / "nested" / "llama")
    return d


@pytest.fixture(scope="session")
def fake_zoo(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("zoo-root")
    shutil.copytree(model_dir / "llama", root / "tiny-llama-s")
    meta = {"name": "tiny-llama-s", "config_hash": "test", "seed": 0, "train_tokens": 1000}
    (root / "tiny-llama-s" / "qscale_zoo.json").write_text(json.dumps(meta))
    return root


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
