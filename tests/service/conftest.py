"""Fixtures of the service tests: laws, checkpoints under allowed roots, and a live server on 127.0.0.1.

* ``public_models`` (module): a models/ directory with the public law ``public-svc``.
* ``zoo_models`` (session): a models/ directory with ``zoo-svc``, a zoo-kind law over ``sqnr_db`` fitted on a
  small synthetic table, so a prediction needs a model (loaded, and its weights quantized) but no training.
* ``model_dir`` (session): three untrained micro checkpoints (llama, gpt2, opt; ``random_model`` with the
  shared tokenizer) saved as ordinary HF directories, plus ``nested/llama`` -> served via ``--model-dir``.
* ``fake_zoo`` (session): a zoo root whose ``tiny-llama-s`` is the micro llama with a ``qscale_zoo.json``, so
  ``zoo:tiny-llama-s`` resolves without training the zoo.
* ``live_server(app)``: a context manager running uvicorn on 127.0.0.1 (a free port) -> base URL.
* Headless Chromium, one helper in two forms: ``dump_dom(url, profile)`` loads a page once and returns its final
  DOM (``--dump-dom`` after a virtual-time budget); ``chromium_page(profile)`` is a live page driven over the
  DevTools protocol on a pipe (no extra package): viewport size, JavaScript to read the layout, full-page
  screenshots, and the page's uncaught errors and Content-Security-Policy violations. ``CHROMIUM`` is the
  binary, None when there is none (tests using it skip).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
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


def synthetic_zoo_frame(target: str, slope: float, seed: int):
    """A zoo-style law table: 3 families x 3 sizes x 5 SQNRs, damage exp(-slope * sqnr_db) with 10% noise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for fam in ("gpt2", "llama", "opt"):
        for size, n in (("s", 1e5), ("m", 4e5), ("l", 1.6e6)):
            for sq in (5.0, 10.0, 15.0, 20.0, 25.0):
                rows.append(
                    {"model": f"{fam}-{size}", "family": fam, "size": size, "n_nonembed": n, "sqnr_db": sq,
                     "bits_per_element": sq / 6, "element_bits": sq / 6, "fmt_family": "int",
                     target: float(np.exp(-slope * sq) * (1 + 0.1 * rng.standard_normal()))}
                )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qscale.laws.fitting import FitData, fit_law

    d = tmp_path_factory.mktemp("zoo-models")
    frame = synthetic_zoo_frame("dnll", slope=0.23, seed=0)
    fit_law(FitData("zoo", frame, "synthetic"), "sqnr-only", "zoo-svc", "family", models_dir=d)
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


BROWSERS = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "chrome")
CHROMIUM = next((p for p in map(shutil.which, BROWSERS) if p), None)


def _chromium_args(profile: Path | str) -> list[str]:
    return [
        str(CHROMIUM), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={profile}", "--hide-scrollbars",
    ]  # fmt: skip


def dump_dom(url: str, profile: Path | str) -> str:
    """The page's DOM once it has settled: its fetches answered (a 15 s virtual-time budget)."""
    cmd = [*_chromium_args(profile), "--virtual-time-budget=15000", "--dump-dom", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


#: Run in every document before its own scripts: records Content-Security-Policy violations (DevTools-injected
#: scripts are not subject to the page's CSP, the page's own code is).
_RECORD_CSP = (
    "window.__csp = []; document.addEventListener('securitypolicyviolation', "
    "(e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`));"
)


class ChromiumPage:
    """One tab of a headless Chromium, driven over the DevTools protocol (``--remote-debugging-pipe``: JSON
    messages separated by NUL bytes, commands on fd 3, answers and events on fd 4)."""

    def __init__(self, profile: Path | str, timeout: float = 120.0) -> None:
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()
        self._ans_r, ans_w = os.pipe()
        args = [*_chromium_args(profile), "--remote-debugging-pipe", "about:blank"]
        self._log = open(Path(profile).with_suffix(".log"), "wb")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            # bash, not sh: dash redirects only one-digit descriptors
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{ans_w} {cmd_r}<&- {ans_w}>&-', *args],
            pass_fds=(cmd_r, ans_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )  # fmt: skip
        os.close(cmd_r)
        os.close(ans_w)
        self._buf = b""
        self._next = 0
        self.errors: list[str] = []  # uncaught exceptions in the page
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.call(method, session=True)
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": _RECORD_CSP}, session=True)

    # --- the protocol ---------------------------------------------------------------------------------------
    def call(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False
    ) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self._session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._message(deadline)
            if answer.get("method") == "Runtime.exceptionThrown":
                d = answer["params"]["exceptionDetails"]
                self.errors.append(str(d.get("exception", {}).get("description") or d.get("text")))
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ans_r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._ans_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    # --- what a test does with a page --------------------------------------------------------------------------
    def viewport(self, width: int, height: int) -> None:
        """Emulate a screen: below 600 px a phone (the page's viewport meta tag applies), else a desktop."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
            session=True,
        )

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)

    def js(self, expression: str) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON."""
        r = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=True,
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 90.0) -> None:
        """Wait until the JavaScript ``condition`` is true in the page (it is polled every 50 ms)."""
        ok = self.js(
            "new Promise((done) => { const t0 = Date.now(); (function poll() {"
            f" let v = false; try {{ v = !!({condition}); }} catch (e) {{}}"
            f" if (v) done(true); else if (Date.now() - t0 > {timeout * 1000}) done(false);"
            " else setTimeout(poll, 50); })(); })"
        )
        assert ok, f"the page never got to: {condition}\nerrors: {self.errors}"

    def csp_violations(self) -> list[str]:
        return self.js("window.__csp || []")

    def screenshot(self, path: Path | str) -> Path:
        """The whole page (not only the viewport) as a PNG."""
        size = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        r = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            session=True,
        )
        p = Path(path)
        p.write_bytes(base64.b64decode(r["data"]))
        return p

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._cmd_w)
        os.close(self._ans_r)
        self._log.close()


@contextlib.contextmanager
def chromium_page(profile: Path | str) -> Iterator[ChromiumPage]:
    """A live headless Chromium tab (see :class:`ChromiumPage`); the browser is closed afterwards."""
    page = ChromiumPage(profile)
    try:
        yield page
    finally:
        page.close()
