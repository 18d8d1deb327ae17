"""Mixed-precision plans: the solver against brute force, `qscale plan` on a small model, `qscale export`.

Every number is checked against a reference computed here, not by the code under test: the solver against the
exhaustive enumeration of all assignments (and its Lagrangian bound against scipy's LP relaxation); a plan's bits
per weight recomputed from the model's own weight shapes and ``bits_per_element_for``; its optimality against the
exhaustive search over the per-layer terms that ``qscale predict --breakdown`` reports; the export lines against
the GGUF / compressed-tensors names written out by hand.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from qscale.cli import app
from qscale.formats import get_format
from qscale.laws.profile import ProfileCalibration
from qscale.workflows.export import ExportError, gguf_name, to_llama_cpp, to_llm_compressor
from qscale.workflows.plan import PlanError, lagrangian_bound, solve, solve_max_damage

runner = CliRunner()

CANDS = "int3-g16,int4-g16,int8-pc"  # group 16: the random model's d_model is 64

# bits per element of some real formats at in_features 64..4096 (scales counted), and layer sizes
BPE = [2.25, 3.25, 4.25, 4.5, 5.0, 6.0, 8.0, 8.5, 16.0]
NUMEL = [256, 1024, 4096, 11264]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the model here is tiny, and two threads on a loaded 2-core machine make the profile's
    32 backward passes ~20x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------
# Brute force
# ------------------------------------------------------------------------------------------------------
def _all_assignments(d: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every assignment (one column per row): (choices (N, L), total damage (N,), total bits (N,))."""
    n_layers, n_cands = d.shape
    choices = np.array(list(itertools.product(range(n_cands), repeat=n_layers)), dtype=np.int64)
    rows = np.arange(n_layers)
    return choices, d[rows, choices].sum(axis=1), b[rows, choices].sum(axis=1)


def _brute_min_damage(d: np.ndarray, b: np.ndarray, budget: float) -> float:
    _, dmg, bits = _all_assignments(d, b)
    ok = bits <= budget
    return float(dmg[ok].min()) if ok.any() else math.inf


def _instance(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(d, b, number of weights) with 1-6 layers and 1-4 candidates; costs numel x bits-per-element.

    ``monotone``: damage ~ exp(-c * bits), decreasing in bits. ``rough``: that times a random factor in
    [0.3, 3] per entry, candidates drawn with replacement (equal costs, dominated and non-monotone candidates).
    ``inf``: rough, with one forbidden (``inf`` damage) entry.
    """
    n_layers = int(rng.integers(1, 7))
    n_cands = int(rng.integers(2 if kind == "inf" else 1, 5))
    bpe = np.sort(rng.choice(BPE, size=n_cands, replace=kind != "monotone"))
    numel = rng.choice(NUMEL, size=n_layers).astype(float)
    b = numel[:, None] * bpe[None, :]
    scale = rng.uniform(0.1, 10.0, size=(n_layers, 1))
    rate = rng.uniform(0.7, 1.4, size=(n_layers, 1))
    d = scale * np.exp(-rate * bpe[None, :])
    if kind != "monotone":
        d = d * rng.uniform(0.3, 3.0, size=d.shape)
    if kind == "inf":
        d[rng.integers(n_layers), rng.integers(n_cands)] = np.inf
    return d, b, float(numel.sum())


# ------------------------------------------------------------------------------------------------------
# solve / lagrangian_bound
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["monotone", "rough", "inf"])
def test_solve_is_the_brute_force_optimum(kind):
    rng = np.random.default_rng({"monotone": 1, "rough": 2, "inf": 3}[kind])
    checked = 0
    for case in range(40):
        d, b, _ = _instance(rng, kind)
        base, top = float(b.min(axis=1).sum()), float(b.max(axis=1).sum())
        budget = float(rng.uniform(base, 1.05 * top)) if case % 5 else top * 2  # some with no constraint
        opt = _brute_min_damage(d, b, budget)
        where = f"{kind} case {case}: d={d.tolist()} b={b.tolist()} budget={budget}"
        if not math.isfinite(opt):  # only forbidden assignments fit
            # The DP branch raises PlanError; the unconstrained / zero-room branches (qscale/workflows/plan.py
            # :115-118) return a plan with inf damage instead (reported). Either way, never a finite plan.
            try:
                sol = solve(d, b, budget)
            except PlanError:
                continue
            assert sol.damage == math.inf, where
            continue
        sol = solve(d, b, budget)
        rows = np.arange(d.shape[0])
        assert sol.choice.shape == (d.shape[0],), where
        assert sol.bits == pytest.approx(float(b[rows, sol.choice].sum()), rel=1e-12), where
        assert sol.damage == pytest.approx(float(d[rows, sol.choice].sum()), rel=1e-12), where
        assert sol.bits <= budget, where
        assert sol.damage == pytest.approx(opt, rel=1e-9), where
        bound = lagrangian_bound(d, b, budget)
        assert bound <= opt * (1 + 1e-12), where
        assert sol.lower_bound <= opt * (1 + 1e-12), where
        checked += 1
    assert checked >= 30


def test_solve_at_the_cheapest_budget_and_below_it():
    rng = np.random.default_rng(4)
    for _ in range(20):
        d, b, _ = _instance(rng, "rough")
        base = float(b.min(axis=1).sum())
        sol = solve(d, b, base)  # exactly the cheapest: the least damage among the cheapest per row
        assert sol.bits <= base
        assert sol.damage == pytest.approx(_brute_min_damage(d, b, base), rel=1e-9)
        with pytest.raises(PlanError, match="below the cheapest"):
            solve(d, b, base * (1 - 1e-6) - 1.0)


def test_lagrangian_bound_is_the_lp_relaxation():
    """For a multiple-choice knapsack the Lagrangian dual of the budget equals the LP relaxation; a bound that is
    merely valid (say -inf) would pass the <= brute-force check above, so compare with scipy's LP too."""
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(5)
    for case in range(40):
        d, b, _ = _instance(rng, "rough" if case % 2 else "monotone")
        n_layers, n_cands = d.shape
        budget = float(rng.uniform(b.min(axis=1).sum(), 1.05 * b.max(axis=1).sum()))
        scale = float(d.max())
        lp = optimize.linprog(
            (d / scale).ravel(),
            A_ub=(b / budget).ravel()[None, :],
            b_ub=[1.0],
            A_eq=np.kron(np.eye(n_layers), np.ones(n_cands)),
            b_eq=np.ones(n_layers),
            bounds=[(0.0, 1.0)] * d.size,
            method="highs",
        )
        assert lp.status == 0
        bound = lagrangian_bound(d, b, budget) / scale
        # HiGHS' own tolerances are ~1e-7 on a unit-scaled objective
        assert bound == pytest.approx(lp.fun, abs=1e-6), (case, d.tolist(), b.tolist(), budget)
        assert bound <= _brute_min_damage(d, b, budget) / scale * (1 + 1e-12)


def test_solve_finds_an_optimum_that_fills_the_budget_exactly():
    # extras over the cheapest: 6, 9, 21; room 27 = 6 + 21 exactly -> optimum [1, 0, 1] with damage 12.
    # (Rounded up to room/20000 units, 4445 + 15556 > 20000 and a rounded DP returns [1, 1, 0], damage 17: costs
    # that are whole bits are now solved on their common grain, exactly.)
    d = np.array([[8.0, 3.0], [8.0, 6.0], [8.0, 1.0]])
    b = np.array([[10.0, 16.0], [15.0, 24.0], [35.0, 56.0]])
    assert _brute_min_damage(d, b, 87.0) == 12.0
    sol = solve(d, b, 87.0)
    assert sol.bits <= 87.0
    assert sol.damage == pytest.approx(12.0, rel=1e-9)


# ------------------------------------------------------------------------------------------------------
# solve_max_damage
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["monotone", "rough"])
def test_solve_max_damage_is_the_fewest_bits(kind):
    rng = np.random.default_rng({"monotone": 11, "rough": 12}[kind])
    tol = 1e-3
    for case in range(30):
        d, b, n_weights = _instance(rng, kind)
        _, dmg, bits = _all_assignments(d, b)
        if case % 3 == 0:
            cap = float(dmg.min()) * (1 + 1e-9)  # only the least-damage assignments qualify
        else:
            cap = float(rng.uniform(dmg.min(), dmg.max()))
        where = f"{kind} case {case}: d={d.tolist()} b={b.tolist()} K={cap}"
        min_bits = float(bits[dmg <= cap].min())
        sol, bpw = solve_max_damage(d, b, n_weights, cap)
        assert sol.damage <= cap, where
        assert sol.bits <= min_bits + tol * n_weights, where
        assert sol.bits >= min_bits * (1 - 1e-12), where  # nothing beats the brute-force minimum
        assert bpw == pytest.approx(sol.bits / n_weights, rel=1e-12), where


def test_solve_max_damage_unreachable_raises():
    rng = np.random.default_rng(13)
    for _ in range(10):
        d, b, n_weights = _instance(rng, "rough")
        _, dmg, _ = _all_assignments(d, b)
        with pytest.raises(PlanError, match="no plan"):
            solve_max_damage(d, b, n_weights, float(dmg.min()) * 0.5)


# ------------------------------------------------------------------------------------------------------
# qscale plan on a random Llama
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory, shared_tokenizer):
    """A random Llama (d_model 64, 2 layers) on disk, an identity profile calibration, its per-layer terms per
    candidate from `qscale predict --breakdown`, and its linear layers' shapes from the weights themselves."""
    from qscale.lm.layers import linear_layers
    from qscale.lm.zoo import random_model

    root = tmp_path_factory.mktemp("plan-cli")
    lm = random_model("llama", shared_tokenizer, d_model=64, n_layers=2, n_heads=4, seq_len=64, seed=7)
    model_dir = root / "m"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    models_dir = root / "models"
    ProfileCalibration(
        a_=0.0, b_=1.0, q_=0.3, models_=["x", "y"], n_runs_=10, raw_range_=(1e-6, 10.0), lomo_abs_resid_=[0.3] * 10
    ).save(models_dir / "profile-kld.json")  # fmt: skip
    shapes = {r.name: (r.out_features, r.in_features) for r in linear_layers(lm.model)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QSCALE_PROFILE_DIR", str(root / "profiles"))
        r = runner.invoke(
            app,
            [
                "predict",
                "--model",
                str(model_dir),
                "--formats",
                CANDS,
                "--breakdown",
                "--json",
                "--no-progress",
                "--models-dir",
                str(models_dir),
            ],
        )
        assert r.exit_code == 0, r.output
        terms = {p["format"]: p["layers"] for p in json.loads(r.stdout)["predictions"]}
        yield SimpleNamespace(
            model_dir=model_dir, models_dir=models_dir, shapes=shapes, terms=terms, root=root
        )


def _plan(env, *args: str) -> dict:
    r = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(env.model_dir),
            "--candidates",
            CANDS,
            "--json",
            "--models-dir",
            str(env.models_dir),
        ]
        + list(args),
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _bits(spec: str, shape: tuple[int, int]) -> float:
    return get_format(spec).bits_per_element_for(shape[1]) * shape[0] * shape[1]


def _recomputed_bpw(env, plan: dict) -> float:
    bits = sum(_bits(spec, env.shapes[n]) for n, spec in plan["layers"].items())
    bits += sum(16.0 * env.shapes[n][0] * env.shapes[n][1] for n in plan["kept"])
    return bits / sum(o * i for o, i in env.shapes.values())


def _brute_plan_optimum(env, names: list[str], budget: float) -> tuple[float, float]:
    """Least total predicted KL of ``names`` with total bits <= budget over all 3^L assignments (meet in the
    middle: two halves of <= 3^7 assignments each, all pairs), and the bits of that optimum."""
    specs = CANDS.split(",")
    d = np.array([[env.terms[s][n] for s in specs] for n in names])
    b = np.array([[_bits(s, env.shapes[n]) for s in specs] for n in names])
    half = len(names) // 2
    _, d1, b1 = _all_assignments(d[:half], b[:half])
    _, d2, b2 = _all_assignments(d[half:], b[half:])
    tot_d = d1[:, None] + d2[None, :]
    tot_b = b1[:, None] + b2[None, :]
    tot_d = np.where(tot_b <= budget, tot_d, np.inf)
    k = np.unravel_index(int(np.argmin(tot_d)), tot_d.shape)
    return float(tot_d[k]), float(tot_b[k])


# 5.0: exactly the uniform int4-g16 bpw (an exact-fit budget); its optimum leaves 1024 bits unused
@pytest.mark.parametrize(("target", "fills"), [(4.65, True), (5.0, False), (5.45, True)])
def test_plan_meets_the_target_and_is_optimal(llama, target, fills, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(llama.root / "profiles"))
    plan = _plan(llama, "--target-bpw", str(target))
    assert set(plan["layers"]) == set(llama.shapes) and plan["kept"] == []  # every profiled layer planned
    assert set(plan["layers"].values()) <= set(CANDS.split(","))
    bpw = _recomputed_bpw(llama, plan)
    assert bpw == pytest.approx(plan["bpw"], rel=1e-12)
    assert bpw <= target
    for n, rec in plan["detail"].items():
        assert rec["format"] == plan["layers"][n]
        assert rec["numel"] == llama.shapes[n][0] * llama.shapes[n][1]
        assert rec["kld"] == pytest.approx(llama.terms[rec["format"]][n], rel=1e-9)  # as `predict` says
    total = sum(rec["kld"] for rec in plan["detail"].values())
    assert plan["predicted"]["value"] == pytest.approx(total, rel=1e-9)  # identity calibration
    n_all = sum(o * i for o, i in llama.shapes.values())
    for u in plan["uniform"]:  # each uniform candidate is a feasible plan when its bpw fits
        u_bpw = sum(_bits(u["format"], s) for s in llama.shapes.values()) / n_all
        assert u["bpw"] == pytest.approx(u_bpw, rel=1e-12)
        assert u["value"] == pytest.approx(sum(llama.terms[u["format"]].values()), rel=1e-9)
        if u_bpw <= target:
            assert plan["predicted"]["value"] <= u["value"] * (1 + 1e-9), u
    opt, opt_bits = _brute_plan_optimum(llama, sorted(llama.shapes), target * n_all)
    assert plan["predicted"]["value"] == pytest.approx(opt, rel=1e-9)
    assert plan["solver"]["lower_bound"] <= opt * (1 + 1e-12)
    # within 0.01 bits/weight of the target where the optimum is: here costs move in 1024-bit steps (0.0102
    # bits/weight), so the optimum itself may stop further below (brute force says which targets it fills)
    assert (opt_bits / n_all >= target - 0.01) == fills
    assert bpw >= min(target - 0.01, opt_bits / n_all) - 1e-12


def test_plan_keeps_layers_at_16_bits(llama, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(llama.root / "profiles"))
    target = 8.0
    plan = _plan(llama, "--target-bpw", str(target), "--keep", "*.down_proj")
    down = sorted(n for n in llama.shapes if n.endswith(".down_proj"))
    assert len(down) == 2 and plan["kept"] == down
    assert not set(down) & set(plan["layers"]) and not set(down) & set(plan["detail"])
    assert set(plan["layers"]) | set(down) == set(llama.shapes)
    bpw = _recomputed_bpw(llama, plan)  # kept layers at 16 bits per weight
    assert bpw == pytest.approx(plan["bpw"], rel=1e-12)
    assert bpw <= target
    n_all = sum(o * i for o, i in llama.shapes.values())
    kept_bits = sum(16.0 * llama.shapes[n][0] * llama.shapes[n][1] for n in down)
    rest = sorted(set(llama.shapes) - set(down))
    opt, _ = _brute_plan_optimum(llama, rest, target * n_all - kept_bits)
    assert plan["predicted"]["value"] == pytest.approx(opt, rel=1e-9)
    assert plan["predicted"]["value"] == pytest.approx(
        sum(llama.terms[s][n] for n, s in plan["layers"].items()), rel=1e-9
    )


def test_plan_max_kld(llama, monkeypatch):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(llama.root / "profiles"))
    specs = CANDS.split(",")
    uniform = {s: sum(llama.terms[s].values()) for s in specs}
    cap = math.sqrt(uniform["int4-g16"] * uniform["int8-pc"])  # between two uniform candidates
    plan = _plan(llama, "--max-kld", f"{cap:.10g}")
    assert plan["target"] == {"max_kld": pytest.approx(cap, rel=1e-9)}
    value = sum(llama.terms[s][n] for n, s in plan["layers"].items())
    assert plan["predicted"]["value"] == pytest.approx(value, rel=1e-9)
    assert value <= cap
    bpw = _recomputed_bpw(llama, plan)
    assert bpw == pytest.approx(plan["bpw"], rel=1e-12)
    # the fewest bits: every assignment with <= bpw - 0.0011 bits/weight predicts more than the cap
    n_all = sum(o * i for o, i in llama.shapes.values())
    below, _ = _brute_plan_optimum(llama, sorted(llama.shapes), (bpw - 0.0011) * n_all)
    assert below > cap
    r = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(llama.model_dir),
            "--candidates",
            CANDS,
            "--models-dir",
            str(llama.models_dir),
        ]
        + ["--max-kld", f"{uniform['int8-pc'] * 0.5:.6g}"],
    )
    assert r.exit_code == 2 and "Traceback" not in r.output and "no plan" in r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "exactly one of"),
        (["--target-bpw", "5", "--max-kld", "0.1"], "exactly one of"),
        (["--target-bpw", "5", "--candidates", "int4-g16,int9-pc"], "int9-pc"),
        (["--target-bpw", "2.0"], "below the cheapest"),
    ],
)
def test_plan_errors_are_one_line(llama, monkeypatch, args, needle):
    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(llama.root / "profiles"))
    r = runner.invoke(
        app,
        [
            "plan",
            "--model",
            str(llama.model_dir),
            "--candidates",
            CANDS,
            "--models-dir",
            str(llama.models_dir),
        ]
        + args,
    )
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert r.stdout == ""


# ------------------------------------------------------------------------------------------------------
# qscale export
# ------------------------------------------------------------------------------------------------------
def _plan_doc(layers: dict[str, str], kept: tuple[str, ...] = ()) -> dict:
    return {
        "qscale_plan": 1,
        "model": {"name": "m", "identity": "x"},
        "bpw": 4.5,
        "kept": list(kept),
        "layers": layers,
    }


def test_gguf_names():
    assert gguf_name("model.layers.0.self_attn.q_proj") == "blk.0.attn_q"
    assert gguf_name("model.layers.11.self_attn.o_proj") == "blk.11.attn_output"
    assert gguf_name("model.layers.3.mlp.gate_proj") == "blk.3.ffn_gate"
    assert gguf_name("lm_head") == "output"
    assert gguf_name("transformer.h.0.attn.c_attn") is None


def test_to_llama_cpp_lines():
    plan = _plan_doc(
        {"model.layers.0.self_attn.q_proj": "int4-g32", "model.layers.1.mlp.down_proj": "int8-g32"},
        kept=("model.layers.1.self_attn.v_proj",),
    )
    res = to_llama_cpp(plan)
    lines = res["tensor_types"].splitlines()
    assert sorted(lines) == sorted(
        [r"blk\.0\.attn_q\.weight=q4_0", r"blk\.1\.ffn_down\.weight=q8_0", r"blk\.1\.attn_v\.weight=bf16"]
    )
    with pytest.raises(ExportError, match="nf4-g64"):
        to_llama_cpp(_plan_doc({"model.layers.0.self_attn.q_proj": "nf4-g64"}))


def test_to_llm_compressor_recipe():
    yaml = pytest.importorskip("yaml")
    layers = {
        "model.layers.0.self_attn.q_proj": "int4-g128",
        "model.layers.0.mlp.up_proj": "int4-g128",
        "model.layers.1.mlp.down_proj": "int8-pc",
        "model.layers.1.self_attn.k_proj": "int4-g64-asym",
    }
    text = to_llm_compressor(_plan_doc(layers, kept=("model.layers.1.self_attn.v_proj",)))
    doc = yaml.safe_load(text)
    mod = doc["quant_stage"]["quant_modifiers"]["QuantizationModifier"]
    assert "model.layers.1.self_attn.v_proj" in mod["ignore"]
    groups = list(mod["config_groups"].values())
    assert len(groups) == 3  # one per format
    by_targets = {tuple(sorted(g["targets"])): g["weights"] for g in groups}
    expect = {
        (r"re:^model\.layers\.0\.mlp\.up_proj$", r"re:^model\.layers\.0\.self_attn\.q_proj$"): {
            "num_bits": 4,
            "type": "int",
            "symmetric": True,
            "strategy": "group",
            "group_size": 128,
        },
        (r"re:^model\.layers\.1\.mlp\.down_proj$",): {
            "num_bits": 8,
            "type": "int",
            "symmetric": True,
            "strategy": "channel",
        },
        (r"re:^model\.layers\.1\.self_attn\.k_proj$",): {
            "num_bits": 4,
            "type": "int",
            "symmetric": False,
            "strategy": "group",
            "group_size": 64,
        },
    }
    assert set(by_targets) == set(expect)
    for targets, want in expect.items():
        got = by_targets[targets]
        assert {k: got.get(k) for k in want} == want, targets
        if want["strategy"] != "group":
            assert "group_size" not in got
        # the regexes match exactly their layers
        for t in targets:
            assert t.startswith("re:")
            pat = t[3:]
            import re

            assert [n for n in layers if re.match(pat, n)] == [
                n for n in layers if pat == f"^{re.escape(n)}$"
            ]
    with pytest.raises(ExportError, match="mxfp4-e2m1-b32"):
        to_llm_compressor(_plan_doc({"model.layers.0.self_attn.q_proj": "mxfp4-e2m1-b32"}))
    gptq = yaml.safe_load(to_llm_compressor(_plan_doc(layers), method="gptq"))
    assert list(gptq["quant_stage"]["quant_modifiers"]) == ["GPTQModifier"]


def test_export_cli(tmp_path):
    from qscale.quantize.plans import save_plan

    plan = save_plan(
        _plan_doc({"model.layers.0.self_attn.q_proj": "int4-g32", "model.layers.0.mlp.up_proj": "int5-g32"}),
        tmp_path / "p.json",
    )
    r = runner.invoke(app, ["export", str(plan), "--to", "llama.cpp"])
    assert r.exit_code == 0, r.output
    assert sorted(r.stdout.splitlines()) == [r"blk\.0\.attn_q\.weight=q4_0", r"blk\.0\.ffn_up\.weight=q5_0"]
    out = tmp_path / "recipe.yaml"
    r = runner.invoke(app, ["export", str(plan), "--to", "llm-compressor", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "QuantizationModifier" in out.read_text()


def test_export_errors_are_one_line(tmp_path):
    not_plan = tmp_path / "other.json"
    not_plan.write_text(json.dumps({"kind": "profile-calibration", "a_": 0.0}))
    not_json = tmp_path / "broken.json"
    not_json.write_text("{not json")
    from qscale.quantize.plans import save_plan

    nf4 = save_plan(_plan_doc({"model.layers.0.self_attn.q_proj": "nf4-g64"}), tmp_path / "nf4.json")
    cases = [
        (["export", str(tmp_path / "missing.json"), "--to", "llama.cpp"], "does not exist"),
        (["export", str(not_plan), "--to", "llama.cpp"], "not a qscale plan"),
        (["export", str(not_json), "--to", "llm-compressor"], "not JSON"),
        (["export", str(nf4), "--to", "llama.cpp"], "nf4-g64"),
        (["export", str(nf4), "--to", "gguf"], "llama.cpp, llm-compressor"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, (args, r.output)


def test_plan_file_written_and_exportable(llama, monkeypatch, tmp_path):
    """`qscale plan --out` writes what `load_plan` and `qscale export` read back."""
    from qscale.quantize.plans import load_plan

    monkeypatch.setenv("QSCALE_PROFILE_DIR", str(llama.root / "profiles"))
    out: Path = tmp_path / "plan.json"
    r = runner.invoke(
        app,
        ["plan", "--model", str(llama.model_dir), "--candidates", "int4-g32,int8-g32", "--target-bpw", "6"]
        + ["--models-dir", str(llama.models_dir), "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    plan = load_plan(out)
    assert set(plan["layers"]) == set(llama.shapes)
    r = runner.invoke(app, ["export", str(out), "--to", "llama.cpp"])
    assert r.exit_code == 0, r.output
    want = {"int4-g32": "q4_0", "int8-g32": "q8_0"}
    lines = r.stdout.splitlines()
    assert len(lines) == len(llama.shapes)
    for n, spec in plan["layers"].items():
        assert f"{gguf_name(n)}.weight".replace(".", r"\.") + f"={want[spec]}" in lines
