"""Mixed-precision plans: one format per linear layer at a bits budget, chosen from the predicted per-layer damage.

**The problem.** Layer ``l`` (``n_l`` weights, input width ``k_l``) stored in candidate format ``c`` costs
``b_lc = fmt_c.bits_per_element_for(k_l) * n_l`` bits (scales and partial trailing groups counted) and adds
``d_lc`` nats/token to the predicted KL: the sensitivity-profile term ``0.5 * sum F * dW^2 / N`` of that layer's
RTN error, which the profile law treats as additive over layers. A plan minimises ``sum_l d_l`` subject to
``sum_l b_l <= B * sum_l n_l`` (``B``: the target bits per weight): a multiple-choice knapsack. Layers the user
keeps in high precision cost 16 bits per weight and add nothing.

**The solver: exact dynamic programming, with a Lagrangian bound as a certificate.** The DP runs over the bits
*above* the all-cheapest assignment, keeping for every budget step the least damage and the choice that reached it.
Costs are whole bits, so the step is their greatest common divisor and the DP is exact (``method: "dp-exact"``,
up to 200,000 steps: Qwen2.5-0.5B at 4.5 bpw takes 34,320 steps, 0.24 s); otherwise (fractional costs, or more
steps) it uses 20,000 equal steps with costs rounded *up*, so every plan still fits, and a greedy pass spends the
slack (``method: "dp"``). Why not the Lagrangian sweep alone: minimising ``d + lambda * b`` per layer only ever
lands on the vertices of each layer's lower convex hull, so at a given target it stops at the last breakpoint below
it and leaves bits unused (the issue asks for a plan within 0.01 bits of the target), and it cannot pick a format
that is off the hull. The Lagrangian dual is still computed: ``max_lambda sum_l min_c (d_lc + lambda b_lc) - lambda
* budget`` is a lower bound on the optimum, and the plan reports ``gap = plan - bound``.

**The dual** (``max_kld``): the fewest bits whose predicted KL is at most ``K``, by bisection on the budget (the DP
optimum is monotone in the budget), to 0.001 bits per weight.

**The plan file** (JSON, ``qscale_plan: 1``)::

    {"qscale_plan": 1, "model": {"name", "identity"}, "target": {"bpw": 4.5} | {"max_kld": 0.1},
     "bpw": 4.4931, "candidates": ["int4-g128", ...], "kept": [layer, ...],
     "layers": {layer: format_spec, ...},
     "predicted": {"kld", "lo", "hi", "alpha", "raw", "dnll": {...}},
     "uniform": [{"format", "bpw", "kld", "lo", "hi"}, ...],          # each candidate on every layer
     "solver": {"method": "dp", "units", "lower_bound", "gap", "seconds"},
     "detail": {layer: {"numel", "in_features", "bits", "kld"}}}

``layers`` is what ``qscale quantize --plan`` and ``qscale eval --plan`` apply; the rest is the record.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qscale.quantize.plans import PLAN_VERSION, PlanError, check_plan_model, load_plan, save_plan

__all__ = [
    "PlanError",
    "anchors_from_stores",
    "check_plan_model",
    "lagrangian_bound",
    "load_plan",
    "plan_model",
    "save_plan",
    "solve",
    "solve_max_damage",
]

KEPT_BITS = 16.0  # a kept (unquantized) layer is stored in bf16/fp16
DEFAULT_UNITS = 20_000
EXACT_UNITS = 200_000  # up to this many whole-grain steps the DP runs on exact costs


# ------------------------------------------------------------------------------------------------------
# The solver (pure numpy; no model needed)
# ------------------------------------------------------------------------------------------------------
@dataclass
class Solution:
    choice: np.ndarray  # (L,) index of the chosen candidate per layer
    damage: float  # sum of the chosen d
    bits: float  # sum of the chosen b
    lower_bound: float  # Lagrangian lower bound on the optimal damage at this budget
    units: int
    method: str = "dp"


def lagrangian_bound(d: np.ndarray, b: np.ndarray, budget: float) -> float:
    """``max_{lambda >= 0} g(lambda)``, ``g = sum_l min_c (d_lc + lambda b_lc) - lambda * budget``: a lower bound on
    the optimal damage at ``budget`` (weak duality).

    ``g`` is concave and piecewise linear; its kinks are at the exchange rates ``(d_lc - d_lc') / (b_lc' - b_lc)``
    where a layer's minimiser changes, so the maximum is the largest ``g`` over ``lambda = 0`` and those rates.
    """
    d = np.where(np.isfinite(d), d, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = (d[:, :, None] - d[:, None, :]) / (b[:, None, :] - b[:, :, None])
    lams = np.unique(np.concatenate([[0.0], rates[np.isfinite(rates) & (rates > 0)]]))
    dd = np.where(np.isnan(d), np.inf, d)
    best = -np.inf
    for chunk in np.array_split(lams, max(1, lams.size // 256)):
        vals = (dd[None] + chunk[:, None, None] * b[None]).min(axis=2).sum(axis=1) - chunk * budget
        best = max(best, float(vals.max()))
    return best


def solve(
    d: np.ndarray, b: np.ndarray, budget: float, *, units: int = DEFAULT_UNITS, certify: bool = True
) -> Solution:
    """Choose one column per row of ``d`` (damage) minimising the total with ``sum b <= budget``.

    ``d``, ``b``: ``(L, C)`` arrays (use ``inf`` damage for a forbidden pair). Raises :class:`PlanError` when
    even the cheapest choice of every row exceeds the budget. ``certify=False`` skips the Lagrangian bound
    (``lower_bound`` is NaN), for callers that solve many budgets and report one.
    """
    d = np.asarray(d, dtype=float)
    b = np.asarray(b, dtype=float)
    n_layers, _ = d.shape
    method = "dp"
    base_idx = b.argmin(axis=1)
    base = float(b[np.arange(n_layers), base_idx].sum())
    if base > budget * (1 + 1e-12):
        raise PlanError(f"the budget is below the cheapest plan ({base:.6g} bits needed, {budget:.6g} given)")
    extra = b - b[np.arange(n_layers), base_idx][:, None]  # >= 0
    room = budget - base
    span = float(extra.max(axis=1).sum())
    if span <= 0 or room >= span:  # the budget is no constraint: the least-damage choice per row
        choice = d.argmin(axis=1)
    elif room <= 1e-12 * max(
        abs(budget), 1.0
    ):  # no room above the cheapest: the least damage among the cheapest
        choice = np.where(extra <= 0, d, np.inf).argmin(axis=1)
    else:
        grain = _common_grain(extra)
        if grain > 0 and room / grain <= EXACT_UNITS:  # whole multiples of one grain: the DP is exact
            method, units = "dp-exact", int(math.floor(room / grain + 1e-9))
            unit = grain
        else:
            method, unit = "dp", room / units
        # rounded up, so every DP plan fits; anything dearer than the whole room is capped (never affordable)
        cost = np.ceil(np.minimum(extra / unit, units + 1.0) - 1e-9).astype(np.int64)
        best = np.full(units + 1, np.inf)
        best[0] = 0.0
        arg = np.zeros((n_layers, units + 1), dtype=np.int16)
        for layer in range(n_layers):
            new = np.full(units + 1, np.inf)
            pick = np.zeros(units + 1, dtype=np.int16)
            for c in np.argsort(cost[layer]):
                k = int(cost[layer, c])
                if k > units or not np.isfinite(d[layer, c]):
                    continue
                cand = np.full(units + 1, np.inf)
                cand[k:] = best[: units + 1 - k] + d[layer, c]
                better = cand < new
                new[better] = cand[better]
                pick[better] = c
            best, arg[layer] = new, pick
        u = int(np.argmin(best))
        if not np.isfinite(best[u]):
            raise PlanError("no assignment fits the budget with finite predicted damage")
        choice = np.zeros(n_layers, dtype=np.int64)
        for layer in range(n_layers - 1, -1, -1):
            c = int(arg[layer, u])
            choice[layer] = c
            u -= int(cost[layer, c])
        choice = _fill(choice, d, b, budget)
    rows = np.arange(n_layers)
    damage = float(d[rows, choice].sum())
    if not np.isfinite(damage):
        raise PlanError("no assignment fits the budget with finite predicted damage")
    return Solution(
        choice=choice,
        damage=damage,
        bits=float(b[rows, choice].sum()),
        lower_bound=lagrangian_bound(d, b, budget) if certify else float("nan"),
        units=units,
        method=method,
    )


def _common_grain(extra: np.ndarray) -> float:
    """The largest whole number of bits dividing every extra cost (0 when the costs are not whole bits)."""
    vals = extra[extra > 0]
    if vals.size == 0 or not np.allclose(vals, np.round(vals), rtol=0, atol=1e-6) or vals.max() > 2**62:
        return 0.0
    return float(np.gcd.reduce(np.round(vals).astype(np.int64)))


def _fill(choice: np.ndarray, d: np.ndarray, b: np.ndarray, budget: float) -> np.ndarray:
    """Spend the bits left by rounding: repeatedly take the single-layer change with the largest damage saving
    that still fits."""
    choice = choice.copy()
    rows = np.arange(len(choice))
    while True:
        left = budget - float(b[rows, choice].sum())
        gain = d[rows, choice][:, None] - d  # > 0: a saving
        more = b - b[rows, choice][:, None]
        ok = (gain > 0) & (more <= left + 1e-9) & np.isfinite(d)
        if not ok.any():
            return choice
        gain = np.where(ok, gain, -np.inf)
        layer, c = np.unravel_index(int(np.argmax(gain)), gain.shape)
        choice[layer] = c


def solve_max_damage(
    d: np.ndarray,
    b: np.ndarray,
    n_weights: float,
    max_damage: float,
    *,
    units: int = DEFAULT_UNITS,
    tol: float = 1e-3,
) -> tuple[Solution, float]:
    """Fewest bits per weight whose optimal plan has total damage <= ``max_damage``: bisection on the budget.

    Returns the solution and its budget in bits per weight. ``damage(budget)`` is non-increasing, so bisection finds
    the smallest feasible budget to ``tol`` bits per weight.
    """
    lo = float(b.min(axis=1).sum()) / n_weights
    hi = float(b.max(axis=1).sum()) / n_weights
    top = solve(d, b, hi * n_weights, units=units, certify=False)
    if top.damage > max_damage:
        raise PlanError(
            f"no plan from these candidates reaches predicted KL <= {max_damage:g}: the least is {top.damage:.4g}, "
            "with every layer in its best candidate; add a higher-precision candidate"
        )
    try:
        sol_lo = solve(d, b, lo * n_weights, units=units, certify=False)
    except PlanError:
        sol_lo = None
    if sol_lo is not None and sol_lo.damage <= max_damage:
        sol_lo.lower_bound = lagrangian_bound(d, b, lo * n_weights)
        return sol_lo, lo
    best, best_budget = top, hi * n_weights
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        try:
            s = solve(d, b, mid * n_weights, units=units, certify=False)
        except PlanError:  # nothing with finite damage fits this budget: too low
            lo = mid
            continue
        if s.damage <= max_damage:
            hi, best, best_budget = mid, s, mid * n_weights
        else:
            lo = mid
    best.lower_bound = lagrangian_bound(d, b, best_budget)
    return best, best.bits / n_weights


# ------------------------------------------------------------------------------------------------------
# Planning a model
# ------------------------------------------------------------------------------------------------------
def _cost_tables(
    terms: list[dict[str, Any]], profile: Any, kept: set[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    names = [n for n in profile.layers if n not in kept]
    from qscale.formats import get_format

    numel = np.array([float(np.prod(profile.layers[n].shape)) for n in names])
    d = np.empty((len(names), len(terms)))
    b = np.empty_like(d)
    for j, item in enumerate(terms):
        fmt = get_format(item["format"])
        for i, n in enumerate(names):
            d[i, j] = item["layers"][n]["kld"]
            b[i, j] = fmt.bits_per_element_for(profile.layers[n].shape[1]) * numel[i]
    return names, numel, d, b


def plan_model(
    model: Any,
    candidates: Sequence[str],
    *,
    target_bpw: float | None = None,
    max_kld: float | None = None,
    keep: Sequence[str] = (),
    alpha: float = 0.1,
    units: int = DEFAULT_UNITS,
    models_dir: str | Path | None = None,
    profile_dir: str | Path | None = None,
    anchors: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Plan ``model`` (a reference for :func:`qscale.lm.load` or a loaded model): see the module docstring.

    ``anchors``: measured KL of this model with some candidates applied uniformly (``{spec: kld}``, e.g. from
    :func:`anchors_from_stores`). Each anchored candidate's per-layer terms are scaled by ``measured / raw`` of its
    uniform prediction before solving, so the plan and its prediction carry the model's own level per format (the
    profile's diagonal misses a format-dependent factor: 0.5-0.9x on SmolLM2, 1.2-2.8x on Qwen2.5-0.5B);
    candidates without an anchor get the geometric mean of the others' factors.
    """
    from qscale.formats import FormatError, get_format
    from qscale.lm import load
    from qscale.measure.sensitivity import cached_profile
    from qscale.workflows.profile import UNITS, _interval, calibrations, format_terms, population

    if (target_bpw is None) == (max_kld is None):
        raise PlanError("give exactly one of --target-bpw and --max-kld")
    if target_bpw is not None and not (0 < target_bpw <= 32):
        raise PlanError(f"--target-bpw must be in (0, 32] bits per weight, got {target_bpw}")
    if max_kld is not None and not max_kld > 0:
        raise PlanError(f"--max-kld must be a positive KL in nats/token, got {max_kld}")
    specs: list[str] = []
    for spec in candidates:
        try:
            s = str(get_format(spec))
        except FormatError as err:
            raise PlanError(f"candidate {spec!r}: {err}") from err
        if s not in specs:
            specs.append(s)
    if not specs:
        raise PlanError("no candidate formats; pass e.g. --candidates int3-g128,int4-g128,int5-pc,int8-pc")

    t0 = time.perf_counter()
    lm = load(model) if isinstance(model, str) else model
    pop = population(lm.name)
    cal, cal_dnll = calibrations(pop, models_dir, alpha)
    prof, path, _ = cached_profile(lm, cache_dir=profile_dir)
    t_plan = time.perf_counter()
    terms = format_terms(lm, prof, specs, cache=Path(path).with_suffix(".terms.json"))
    kept = {n for n in prof.layers if any(fnmatch.fnmatchcase(n, p) for p in keep)}
    if keep and not kept:
        raise PlanError(
            f"--keep {list(keep)} matched no planned layer; layers are e.g. {list(prof.layers)[:3]}"
        )
    names, numel, d, b = _cost_tables(terms, prof, kept)
    factors = _anchor_factors(specs, d, anchors or {})
    if factors is not None:
        d = d * factors[None, :]

    pf = prof.probe_factor

    def interval(raw: float) -> dict[str, float]:
        if factors is None:
            return _interval(cal, raw, pf)
        # anchored: the terms already carry the measured level; the profile law's interval width is kept
        return {"value": raw, "lo": raw * math.exp(-cal.q_), "hi": raw * math.exp(cal.q_)}

    kept_numel = float(sum(np.prod(prof.layers[n].shape) for n in kept))
    n_all = float(numel.sum()) + kept_numel
    kept_bits = KEPT_BITS * kept_numel
    t_solve = time.perf_counter()
    if target_bpw is not None:
        budget = target_bpw * n_all - kept_bits
        sol = solve(d, b, budget, units=units)
    else:
        raw_max = _raw_for(cal, max_kld, pf) if factors is None else max_kld
        sol, _ = solve_max_damage(d, b, float(numel.sum()), raw_max, units=units)
        budget = sol.bits
    solve_s = time.perf_counter() - t_solve
    bpw = (sol.bits + kept_bits) / n_all
    if target_bpw is not None and bpw > target_bpw + 1e-9:  # the solver guarantees this; say so if not
        raise PlanError(f"internal: plan bpw {bpw} above target {target_bpw}")
    pred = {**interval(sol.damage), "alpha": alpha, "raw": sol.damage, "unit": UNITS["kld"]}
    if cal_dnll is not None and factors is None:
        pred["dnll"] = _interval(cal_dnll, sol.damage, pf)
    uniform = []
    for j, spec in enumerate(specs):
        raw = float(d[:, j].sum())
        uniform.append(
            {
                "format": spec,
                "bpw": (float(b[:, j].sum()) + kept_bits) / n_all,
                "raw": raw,
                **interval(raw),
            }
        )
    layers = {n: specs[int(c)] for n, c in zip(names, sol.choice, strict=True)}
    detail = {
        n: {
            "numel": int(numel[i]),
            "in_features": int(prof.layers[n].shape[1]),
            "format": layers[n],
            "bits": float(b[i, sol.choice[i]]),
            "kld": float(d[i, sol.choice[i]]),
        }
        for i, n in enumerate(names)
    }
    counts: dict[str, int] = {}
    for spec in layers.values():
        counts[spec] = counts.get(spec, 0) + 1
    return {
        "qscale_plan": PLAN_VERSION,
        "model": {"name": lm.name, "identity": lm.facts.identity},
        "target": {"bpw": target_bpw} if target_bpw is not None else {"max_kld": max_kld},
        "bpw": bpw,
        "candidates": specs,
        "kept": sorted(kept),
        "layers": layers,
        "predicted": pred,
        "uniform": uniform,
        "formats_used": counts,
        "solver": {
            "method": sol.method,
            "units": sol.units,
            "budget_bits": budget,
            "lower_bound": sol.lower_bound,
            "gap": sol.damage - sol.lower_bound,
            "seconds": round(solve_s, 3),
        },
        "seconds": {
            "total": round(time.perf_counter() - t0, 2),
            "planning": round(time.perf_counter() - t_plan, 2),
            "terms": round(t_solve - t_plan, 2),
        },
        "profile": {"path": str(path), "estimator": prof.estimator, "n_tokens": prof.n_tokens},
        "calibration": {"population": pop, "form": cal.form, "models": cal.models_, "q": cal.q_},
        "anchors": None
        if factors is None
        else {
            "measured": {k: v for k, v in (anchors or {}).items() if k in specs},
            "factors": dict(zip(specs, factors.tolist(), strict=True)),
        },
        "detail": detail,
    }


def _anchor_factors(specs: Sequence[str], d: np.ndarray, anchors: dict[str, float]) -> np.ndarray | None:
    """Per candidate, measured / raw uniform KL for the anchored ones, their geometric mean for the rest."""
    from qscale.formats import get_format

    given = {str(get_format(k)): float(v) for k, v in anchors.items()}
    raw = d.sum(axis=0)
    f = np.full(len(specs), np.nan)
    for j, spec in enumerate(specs):
        if spec in given and given[spec] > 0 and raw[j] > 0:
            f[j] = given[spec] / raw[j]
    if not np.isfinite(f).any():
        if anchors:
            raise PlanError(
                f"no anchor matches a candidate: anchors {sorted(given)}, candidates {list(specs)}"
            )
        return None
    f[~np.isfinite(f)] = float(np.exp(np.log(f[np.isfinite(f)]).mean()))
    return f


def anchors_from_stores(stores: Sequence[str | Path], lm: Any, method: str = "rtn") -> dict[str, float]:
    """Measured KL of ``lm`` (matched by weights identity) per uniform format, from run stores."""
    from qscale.workflows.profile import measured_runs

    df = measured_runs(stores, method=method)
    if "identity" in df.columns:
        df = df[df["identity"] == lm.facts.identity]
    else:
        df = df[df["model"] == lm.name]
    return {str(r.format): float(r.kld) for r in df.itertuples() if r.kld == r.kld and r.kld > 0}


def _raw_for(cal: Any, value: float, probe_factor: float | None = None) -> float:
    """The raw profile sum whose calibrated prediction is ``value`` (the calibration is increasing in raw; a probe
    calibration reads raw x the profile's probe factor, so that is divided out)."""
    if cal.b_ <= 0:
        raise PlanError("the calibration is not increasing in the raw prediction; --max-kld cannot invert it")
    x = math.exp((math.log(value) - cal.a_) / cal.b_)
    return x / float(cal.predictor(1.0, probe_factor)) if cal.probe else x
