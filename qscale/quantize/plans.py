"""Plan files: a mixed-precision plan (one format per linear layer) as JSON, read and checked before it is applied.

The planner lives in :mod:`qscale.workflows.plan` (its docstring documents the whole file); what ``quantize --plan``
and ``eval --plan`` need is here: the file's version key, its ``layers`` map (layer name -> format spec), and the
weights identity it was made for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan request or a plan file that cannot be honoured; the message names the problem and the choices."""


# ------------------------------------------------------------------------------------------------------
def save_plan(plan: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, default=float) + "\n")
    tmp.replace(path)
    return path


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and check a plan file: a clear :class:`PlanError` for a missing, malformed or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(
            f"plan file {path} does not exist; make one with `qscale plan --model M --target-bpw B ...`"
        )
    try:
        plan = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PlanError(f"plan file {path} is not JSON ({err})") from err
    if not isinstance(plan, dict) or plan.get("qscale_plan") != PLAN_VERSION:
        raise PlanError(f'{path} is not a qscale plan (no "qscale_plan": {PLAN_VERSION} key)')
    layers = plan.get("layers")
    if not isinstance(layers, dict) or not layers or not all(isinstance(v, str) for v in layers.values()):
        raise PlanError(f'plan file {path}: "layers" must map layer names to format specs')
    from qscale.formats import FormatError, get_format

    for name, spec in layers.items():
        try:
            get_format(spec)
        except FormatError as err:
            raise PlanError(f"plan file {path}: layer {name}: {err}") from err
    return plan


def check_plan_model(plan: dict[str, Any], lm: Any) -> list[str]:
    """Warnings when the plan was made for other weights (same layer names, different identity)."""
    want = (plan.get("model") or {}).get("identity")
    if want and want != lm.facts.identity:
        return [
            f"the plan was made for weights {want[:24]}... ({plan['model'].get('name')}), "
            f"these are {lm.facts.identity[:24]}...: its prediction does not apply to them"
        ]
    return []
