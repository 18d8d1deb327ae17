"""The plans report: planned vs uniform formats on the real panel, from ``bench/plan.py``'s measured results.

``write_plan_report(results, plans_dir, out_dir)`` reads ``bench/results/plan_<model>.json`` (measured KL of each plan
and of the uniform candidates, the predicted frontier, planning times) and the plan files under
``reports/plans/``, and writes ``reports/plans.md`` and ``reports/plans_frontier.png``: bits per weight against KL
for every uniform candidate (predicted and measured), the predicted frontier of plans, and the measured plans; then
which layers got which format.

    python -m qscale.report.plans            # after: python bench/plan.py panel:smollm2-135m (and others)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qscale.paths import model_slug

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _grid(plan: dict[str, Any]) -> list[str]:
    """Markdown rows: block x role, each cell the format's short name."""
    cells: dict[int, dict[str, str]] = {}
    assigned = {**plan["layers"], **dict.fromkeys(plan.get("kept", []), "16-bit")}
    for name, spec in assigned.items():
        m = re.match(r".*layers\.(\d+)\..*\.(\w+_proj)$", name)
        if m:
            cells.setdefault(int(m.group(1)), {})[m.group(2)] = spec
    if not cells:
        return []
    lines = [
        "| block | " + " | ".join(r.replace("_proj", "") for r in ROLES) + " |",
        "|---" * (len(ROLES) + 1) + "|",
    ]
    for blk in sorted(cells):
        lines.append(f"| {blk} | " + " | ".join(cells[blk].get(r, "") for r in ROLES) + " |")
    return lines


def write_plan_report(
    results: Sequence[str | Path], plans_dir: str | Path = "reports/plans", out_dir: str | Path = "reports"
) -> Path:
    out_dir = Path(out_dir)
    docs = [json.loads(Path(p).read_text()) for p in results]
    docs = [d for d in docs if "rows" in d]  # plan_timing.json sits beside them
    if not docs:
        raise FileNotFoundError("no bench/results/plan_*.json: run `python bench/plan.py panel:NAME` first")
    lines = [
        "# Mixed-precision plans on the real panel",
        "",
        "Regenerate: `python bench/plan.py panel:smollm2-135m`, `python bench/plan.py panel:qwen2.5-coder-0.5b`, then "
        "`python -m qscale.report.plans`. Each plan is chosen by `qscale plan` from the model's sensitivity profile "
        "(predicted per-layer KL, exact DP over the bits budget), applied with RTN and measured with exact KL on the "
        "panel's evaluation record (enwiki test, stride, 512-token windows, 8,687 scored tokens). The best uniform "
        "candidate at each target is decided by measurement, on the same windows. Targets (issue 13): plan KL "
        "<= 0.7x the best uniform candidate with bpw <= target; plan bpw within 0.01 below the target; predicted "
        "within 25% of measured; planning <= 10 s for a 0.5B model.",
        "",
        "![bits vs KL](plans_frontier.png)",
        "",
    ]
    docs = sorted(docs, key=lambda d: (bool(d.get("anchored")), d["model"]))
    timing = Path(results[0]).with_name("plan_timing.json") if results else None
    if timing is not None and timing.is_file():
        t = json.loads(timing.read_text())
        lines += [
            "## Planning time (profile already computed)",
            "",
            f"`{t['command']}`; {t['hardware']}.",
            "",
            "| model | first plan: terms + solve (s) | re-plan (s) | solve alone (s) | whole command, cold / warm (s) | peak RSS (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        for m, r in t["models"].items():
            c, w = r["cold"], r["warm"]
            lines.append(
                f"| {m} | {c['planning_s']:.2f} | {w['planning_s']:.2f} | {w['solve_s']:.2f} | "
                f"{c['command_wall_s']:.0f} / {w['command_wall_s']:.0f} | {c['max_rss_mib']} |"
            )
        lines += [
            "",
            "The first plan of a model fake-quantizes every candidate once for its per-layer terms (cached next to "
            "the profile, so every later plan of the model, at any budget, costs the solve alone). The whole "
            "command also loads the model and the profile.",
            "",
        ]
    for doc in docs:
        lines += [
            f"## {doc['model']}"
            + (" (anchored on its measured uniform runs)" if doc.get("anchored") else ""),
            "",
            f"Candidates: {', '.join(doc['candidates'])}. Hardware: {doc.get('hardware', '?')}.",
            "",
            "| target bpw | plan bpw | plan KL measured | predicted [90%] | pred / meas | best uniform <= target | "
            "its bpw | its KL | plan / uniform | targets met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in doc["rows"]:
            ratio = r.get("ratio")
            within = 0 <= r["target_bpw"] - r["plan_bpw"] <= 0.01
            pred_ok = abs(r["pred_over_meas"] - 1) <= 0.25
            met = [
                f"ratio {'yes' if ratio is not None and ratio <= 0.7 else 'no'}",
                f"bpw {'yes' if within else 'no'}",
                f"25% {'yes' if pred_ok else 'no'}",
            ]
            lines.append(
                f"| {r['target_bpw']:g} | {r['plan_bpw']:.4f} | {r['plan_kld']:.4g} | {r['plan_predicted']:.4g} "
                f"[{r['plan_lo']:.3g}, {r['plan_hi']:.3g}] | {r['pred_over_meas']:.2f} | "
                f"{r.get('uniform_format', '-')} | {r.get('uniform_bpw', float('nan')):.4f} | "
                f"{r.get('uniform_kld', float('nan')):.4g} | {ratio if ratio is None else f'{ratio:.2f}'} | "
                f"{', '.join(met)} |"
            )
        lines += [
            "",
            f"Evaluation of one plan: {max(r['eval_seconds'] for r in doc['rows']):.0f} s at most.",
            "",
        ]
        if doc.get("anchors"):
            f = doc["anchors"]["factors"]
            lines += [
                "Anchor factors (measured / predicted uniform KL): "
                + ", ".join(f"{k} {v:.2f}" for k, v in f.items())
                + ".",
                "",
            ]
        slug = doc.get("slug") or model_slug(doc["model"])
        for r in doc["rows"]:
            pf = Path(plans_dir) / f"{slug}-bpw{r['target_bpw']:g}.json"
            if not pf.is_file():
                continue
            plan = json.loads(pf.read_text())
            used = ", ".join(
                f"{k}: {v}" for k, v in sorted(plan["formats_used"].items(), key=lambda kv: -kv[1])
            )
            lines += [
                f"**Plan at {r['target_bpw']:g} bpw** (`reports/plans/{pf.name}`): layers per format: {used}.",
                "",
            ]
            if r["target_bpw"] == 4.5 and not doc.get("anchored"):
                lines += ["Which layer got what (4.5 bpw):", "", *_grid(plan), ""]
    path = out_dir / "plans.md"
    path.write_text("\n".join(lines) + "\n")
    _plot(docs, out_dir / "plans_frontier.png")
    return path


def _plot(docs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(docs))
    rows = (len(docs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(docs) :]:
        ax.set_visible(False)
    for ax, doc in zip(axes.flat, docs, strict=False):
        fr = doc.get("frontier") or []
        if fr:
            ax.plot(
                [f["bpw"] for f in fr], [f["value"] for f in fr], "-", color="C0", label="plans, predicted"
            )
            ax.fill_between(
                [f["bpw"] for f in fr], [f["lo"] for f in fr], [f["hi"] for f in fr], color="C0", alpha=0.12
            )
        up = doc.get("uniform_predicted") or {}
        for spec, u in up.items():
            ax.plot(u["bpw"], u["value"], "o", mfc="none", color="C1")
            if spec in doc.get("uniform_measured", {}):
                ax.plot(u["bpw"], doc["uniform_measured"][spec], "o", color="C1")
            ax.annotate(spec, (u["bpw"], u["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.plot([], [], "o", mfc="none", color="C1", label="uniform, predicted")
        ax.plot([], [], "o", color="C1", label="uniform, measured")
        ax.plot(
            [r["plan_bpw"] for r in doc["rows"]],
            [r["plan_kld"] for r in doc["rows"]],
            "*",
            ms=12,
            color="C3",
            label="plans, measured",
        )
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight (scales counted)")
        ax.set_ylabel("KL to the float model (nats/token)")
        ax.set_title(doc["model"] + (" (anchored)" if doc.get("anchored") else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    import glob

    print(write_plan_report(sorted(glob.glob("bench/results/plan_*.json"))))
