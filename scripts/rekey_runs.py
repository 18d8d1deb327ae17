"""Re-key a run store's runs to the current collect version (``COLLECT_VERSION`` 2, 2026-12-04).

Version 2 changed a default: windows and calibration rows start with BOS only when the model's convention does
(``qscale.corpora.windows.model_adds_bos``). Before, they started with BOS whenever the tokenizer had a BOS token.
For a model whose tokenizer declares nothing (the tiny zoo) nothing changed, so its runs only get the new code
version and the key that goes with it. For a model that declares ``add_bos_token: false`` (the real panel:
SmolLM2, Qwen2.5), the runs were measured with BOS; name it with ``--forced-bos`` and its runs get what they were
measured with written into their record: ``eval.add_bos: true``, and ``calibration.add_bos: true`` for calibrated
methods, in the configuration and in ``provenance.feature_settings``, plus ``metrics.bos``. The measurements
themselves are untouched. A sweep with ``add_bos: true`` finds them again; a default sweep measures anew.

    python scripts/rekey_runs.py data/runs.sqlite
    python scripts/rekey_runs.py data/runs_panel.sqlite --forced-bos panel:smollm2-135m panel:qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import json
import sqlite3

from qscale import __version__
from qscale.collect.spec import COLLECT_VERSION, run_key
from qscale.collect.store import _dumps

CODE_VERSION = f"{__version__}+collect{COLLECT_VERSION}"


def _force(record: dict | None) -> None:
    if isinstance(record, dict):
        record["add_bos"] = True


def rekey(path: str, forced_bos: list[str]) -> tuple[int, int]:
    """Re-key every run of the store at ``path``; returns (runs re-keyed, of which BOS-forced)."""
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT run_key, model_ref, config, metrics, provenance FROM runs").fetchall()
    n = n_forced = 0
    with conn:
        for key, ref, config_s, metrics_s, prov_s in rows:
            config = json.loads(config_s)
            metrics = json.loads(metrics_s) if metrics_s else None
            prov = json.loads(prov_s) if prov_s else None
            if ref in forced_bos and "add_bos" not in config["eval"]:
                _force(config["eval"])
                _force(config.get("calibration"))
                _force((config.get("feature_settings") or {}).get("calibration"))
                fs = (prov or {}).get("feature_settings") or {}
                _force(fs.get("eval"))
                _force(fs.get("calibration"))
                if metrics is not None:
                    metrics["bos"] = True
                n_forced += 1
            config["code_version"] = CODE_VERSION
            new = run_key(config)
            if new == key:
                continue
            conn.execute(
                "UPDATE runs SET run_key = ?, config = ?, metrics = ?, provenance = ? WHERE run_key = ?",
                (new, _dumps(config), _dumps(metrics), _dumps(prov), key),
            )
            n += 1
    conn.close()
    return n, n_forced


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--forced-bos", nargs="*", default=[], metavar="MODEL_REF")
    a = ap.parse_args()
    n, n_forced = rekey(a.store, a.forced_bos)
    print(f"{a.store}: {n} runs re-keyed ({n_forced} with add_bos: true written into their record)")
