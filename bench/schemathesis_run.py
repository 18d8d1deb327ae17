"""A long schemathesis run with every check (``--checks all``) against ``qscale serve`` on 127.0.0.1.

The server is the one users start: ``qscale serve`` with the shipped laws (``models/``) and the zoo root
(``$QSCALE_ZOO_DIR`` or ``~/.cache/qscale/zoo``), default limits. Schemathesis runs all its phases (examples,
coverage, fuzzing, stateful) through its own CLI, with two expected-status lists widened (as in
``tests/service/test_schemathesis.py``, the bounded run of the suite): ``positive_data_acceptance`` also
accepts 400, the documented answer to a schema-valid request that names a model or format this server does
not have, or combines fields the API refuses together; ``negative_data_rejection`` also accepts 413, the
documented answer to a body over the size limit, which is checked before the body is parsed. Writes ``bench/results/schemathesis_run.json`` (the
command, versions, per-operation request counts, failures) and prints a summary.

    python bench/schemathesis_run.py --max-examples 500
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "503"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback, our own server
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _summarise(events: list[dict]) -> dict:
    """Requests per operation, response statuses, checks run and the failures, from schemathesis' events."""
    per_op: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    checks: collections.Counter[str] = collections.Counter()
    failures: list[dict] = []
    for ev in events:
        (kind, body), *_ = ev.items()
        if kind != "ScenarioFinished":
            continue
        recorder = body.get("recorder") or {}
        label = recorder.get("label") or "?"
        for interaction in (recorder.get("interactions") or {}).values():
            per_op[label] += 1
            statuses[str((interaction.get("response") or {}).get("status_code"))] += 1
        interactions = recorder.get("interactions") or {}
        for case_id, check_list in (recorder.get("checks") or {}).items():
            for check in check_list:
                checks[check.get("name")] += 1
                if str(check.get("status")).lower() == "failure":
                    failures.append(
                        {"operation": label, "check": check.get("name"), "failure": check.get("failure_info"),
                         **_exchange(interactions.get(case_id) or {})}
                    )  # fmt: skip
    return {"requests": sum(per_op.values()), "per_operation": dict(sorted(per_op.items())),
            "statuses": dict(sorted(statuses.items())), "checks_run": dict(checks), "failures": failures}  # fmt: skip


def _exchange(interaction: dict) -> dict:
    """The request and the response of a failed case, bodies decoded (schemathesis stores them base64)."""
    import base64

    def text(part: dict, key: str) -> str | None:
        raw = (part.get(key) or {}).get("$base64")
        return base64.b64decode(raw).decode("utf-8", "replace")[:2000] if raw else None

    req, resp = interaction.get("request") or {}, interaction.get("response") or {}
    return {"request": {"method": req.get("method"), "uri": req.get("uri"), "body": text(req, "body")},
            "response": {"status_code": resp.get("status_code"), "body": text(resp, "content")}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--max-examples", type=int, default=500, help="schemathesis --max-examples (per operation)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phases", default="examples,coverage,fuzzing,stateful")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "schemathesis_run.json")
    ap.add_argument("--events", type=Path, default=None, help="keep schemathesis' NDJSON events here")
    args = ap.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "qscale.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait(base + "/api/health")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "schemathesis.toml"
            cfg.write_text(CONFIG)
            ndjson = args.events or Path(tmp) / "events.ndjson"
            cmd = [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(cfg), "run", base + "/openapi.json",
                "--checks", "all", "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                "--phases", args.phases, "--workers", "1", "--no-color", "--suppress-health-check", "all",
                "--report", "ndjson", "--report-ndjson-path", str(ndjson),
            ]  # fmt: skip
            t0 = time.perf_counter()
            run = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            summary = _summarise(_events(ndjson)) if ndjson.exists() else {}
        health = json.loads(urllib.request.urlopen(base + "/api/health", timeout=10).read())  # noqa: S310
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    import schemathesis

    from qscale import __version__

    tail = run.stdout.strip().splitlines()[-12:]
    result = {
        "command": "python bench/schemathesis_run.py " + " ".join(sys.argv[1:]),
        "schemathesis_command": " ".join(cmd[2:-4]).replace(str(cfg), "schemathesis.toml").replace(base, "BASE"),
        "config": CONFIG,
        "exit_code": run.returncode,
        "passed": run.returncode == 0 and not summary.get("failures"),
        "seconds": round(seconds, 1),
        **summary,
        "server_health_after": health,
        "schemathesis_output_tail": tail,
        "versions": {"qscale": __version__, "schemathesis": schemathesis.__version__, "python": platform.python_version()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(tail))
    print(f"{summary.get('requests', '?')} requests in {seconds:.0f} s; failures: {len(summary.get('failures', []))}; "
          f"exit {run.returncode} -> {args.out}")  # fmt: skip
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
