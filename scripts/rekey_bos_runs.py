"""Re-key the runs a store holds that were measured with BOS forced on a model whose convention is no BOS.

Before 2026-12-04 every window and calibration row started with BOS whenever the tokenizer had a BOS token. Now
the default (``add_bos`` unset) follows the model's declared convention (``qscale.corpora.windows.model_adds_bos``),
and for the real panel (SmolLM2, Qwen2.5: ``add_bos_token: false`` in their GGUF files) that means no BOS. Runs of
such models stored under a default key were measured with BOS; this script writes what they were measured with
into their record (``eval.add_bos: true``, and ``calibration.add_bos: true`` for calibrated methods), gives them
the key of that record, and records ``metrics.bos``. The measurements themselves are untouched. A sweep with
``add_bos: true`` in its eval and calibration records finds them again; a default sweep measures the models anew.

    python scripts/rekey_bos_runs.py data/runs_panel.sqlite panel:smollm2-135m panel:qwen2.5-coder-0.5b ...
"""

from __future__ import annotations

import json
import sqlite3
import sys

from qscale.collect.spec import run_key
from qscale.collect.store import _dumps


def rekey(path: str, model_refs: list[str]) -> int:
    conn = sqlite3.connect(path)
    rows = conn.execute(
        f"SELECT run_key, config, metrics FROM runs WHERE model_ref IN ({','.join('?' * len(model_refs))})",
        model_refs,
    ).fetchall()
    n = 0
    with conn:
        for key, config_s, metrics_s in rows:
            config = json.loads(config_s)
            metrics = json.loads(metrics_s) if metrics_s else {}
            if "add_bos" in config["eval"] or metrics.get("bos") is not None:
                continue  # already says what it was measured with
            config["eval"]["add_bos"] = True
            if config.get("calibration") is not None:
                config["calibration"]["add_bos"] = True
            metrics["bos"] = True
            new = run_key(config)
            conn.execute(
                "UPDATE runs SET run_key = ?, config = ?, metrics = ? WHERE run_key = ?",
                (new, _dumps(config), _dumps(metrics), key),
            )
            n += 1
    conn.close()
    return n


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/rekey_bos_runs.py STORE MODEL_REF [MODEL_REF ...]")
    print(f"{rekey(sys.argv[1], sys.argv[2:])} runs re-keyed")
