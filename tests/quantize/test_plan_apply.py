"""Applying a mixed-precision plan: ``quantized(model, {layer: spec}, ...)`` and ``qscale quantize/eval --plan``.

References are computed here, separately from the code under test: each planned weight against
``fake_quant(get_format(spec), original)``, unplanned and restored weights against copies taken before, GPTQ with a
uniform plan against GPTQ with the single format, ``eval --plan`` against ``eval -f``, and the SQNR that
``quantize --plan`` prints against ``10 log10(sum w^2 / sum (w - q)^2)`` in float64.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from qscale.cli import app
from qscale.formats import get_format
from qscale.kernels import fake_quant
from qscale.lm.layers import linear_layers
from qscale.quantize import MethodError, get_method, list_methods, quantized
from qscale.quantize.plans import save_plan

runner = CliRunner()

ONE_FORMAT = [m for m in list_methods() if not get_method(m).per_layer_formats]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny models, and two threads on a loaded 2-core machine thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def _mixed_plan(names: list[str]) -> dict[str, str]:
    """Four layers in four different formats (group 16 / block 32 fit the micro models' widths)."""
    return {names[0]: "int4-g16", names[3]: "int8-pc", names[5]: "nf4-g16", names[-1]: "mxfp4-e2m1-b32"}


# ------------------------------------------------------------------------------------------------------
# quantized(model, {layer: spec}, method="rtn")
# ------------------------------------------------------------------------------------------------------
def test_rtn_plan_puts_each_layer_in_its_format(micro_llama):
    model = micro_llama.model
    refs = {r.name: r for r in linear_layers(model)}
    plan = _mixed_plan(list(refs))
    before = _weights(model)
    originals = {n: refs[n].get_weight().detach().clone() for n in refs}
    expected = {n: fake_quant(get_format(s), originals[n].clone()) for n, s in plan.items()}
    with quantized(model, plan, method="rtn") as info:
        for n in refs:
            w = refs[n].get_weight()
            if n in plan:
                assert torch.equal(w, expected[n]), n
                assert not torch.equal(w, originals[n]), n  # it did change
            else:
                assert torch.equal(w, originals[n]), n
        after_apply = model.state_dict()
        planned_params = {f"{n}.weight" for n in plan}
        for k, v in before.items():  # embeddings, norms, unplanned layers: untouched
            if k not in planned_params:
                assert torch.equal(after_apply[k], v), k
        assert info["format"] == "per-layer"
        assert set(info["layers"]) == set(plan)
        for n, rec in info["layers"].items():
            w64, q64 = originals[n].double(), expected[n].double()
            want = 10 * math.log10(float(w64.square().sum()) / float((w64 - q64).square().sum()))
            assert rec["sqnr_db"] == pytest.approx(want, rel=1e-6), n
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_rtn_plan_restores_after_an_exception(micro_llama):
    model = micro_llama.model
    names = [r.name for r in linear_layers(model)]
    before = _weights(model)
    with pytest.raises(RuntimeError, match="boom"), quantized(model, _mixed_plan(names), method="rtn"):
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_plan_errors(micro_llama):
    model = micro_llama.model
    names = [r.name for r in linear_layers(model)]
    before = _weights(model)
    absent = {names[0]: "int4-g16", "model.layers.9.mlp.up_proj": "int4-g16"}
    with pytest.raises(MethodError, match=r"model\.layers\.9\.mlp\.up_proj"), quantized(model, absent):
        pass
    with (
        pytest.raises(MethodError, match="include"),
        quantized(model, {names[0]: "int4-g16"}, include=["*q"]),
    ):
        pass
    assert {"rtn", "gptq"} <= {m for m in list_methods() if get_method(m).per_layer_formats}
    assert "smoothquant" in ONE_FORMAT
    for m in ONE_FORMAT:  # methods that take one format refuse a plan, naming the ones that take it
        with (
            pytest.raises(MethodError, match="gptq, rtn"),
            quantized(model, {names[0]: "int4-g16"}, method=m),
        ):
            pass
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------------------------
# GPTQ with a plan
# ------------------------------------------------------------------------------------------------------
def _calib(lm) -> torch.Tensor:
    return torch.randint(0, len(lm.tokenizer), (4, 32), generator=torch.Generator().manual_seed(0))


def test_gptq_uniform_plan_equals_gptq_single_format(micro_llama):
    model = micro_llama.model
    refs = {r.name: r for r in linear_layers(model)}
    calib = _calib(micro_llama)
    originals = {n: r.get_weight().detach().clone() for n, r in refs.items()}
    with quantized(model, "int4-g16", method="gptq", calib=calib):
        single = {n: r.get_weight().detach().clone() for n, r in refs.items()}
    with quantized(model, dict.fromkeys(refs, "int4-g16"), method="gptq", calib=calib) as info:
        planned = {n: r.get_weight().detach().clone() for n, r in refs.items()}
        assert set(info["layers"]) == set(refs)
    for n in refs:
        assert torch.equal(planned[n], single[n]), n
    # GPTQ did something beyond RTN (error compensation moves weights to other grid points)
    assert any(not torch.equal(single[n], fake_quant(get_format("int4-g16"), originals[n])) for n in refs)
    for n, r in refs.items():
        assert torch.equal(r.get_weight(), originals[n]), n


def test_gptq_partial_plan_touches_only_its_layers(micro_llama):
    model = micro_llama.model
    refs = {r.name: r for r in linear_layers(model)}
    names = list(refs)
    plan = {names[0]: "int4-g16", names[4]: "int8-pc", names[9]: "int3-g16"}
    before = _weights(model)
    with quantized(model, plan, method="gptq", calib=_calib(micro_llama)) as info:
        assert set(info["layers"]) == set(plan)
        for n, r in refs.items():
            changed = not torch.equal(r.get_weight(), before[f"{n}.weight"])
            assert changed == (n in plan), n
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------------------------
# qscale eval --plan / qscale quantize --plan
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_tokenizer):
    from qscale.lm.zoo import random_model

    lm = random_model("llama", shared_tokenizer, d_model=64, n_layers=2, n_heads=4, seq_len=64, seed=7)
    d = tmp_path_factory.mktemp("plan-apply") / "m"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def shapes(model_dir):
    from qscale.lm import load

    return {r.name: (r.out_features, r.in_features) for r in linear_layers(load(str(model_dir)).model)}


def _write_plan(path, layers: dict[str, str], shapes: dict[str, tuple[int, int]], **extra):
    bits = sum(
        get_format(s).bits_per_element_for(shapes[n][1]) * shapes[n][0] * shapes[n][1]
        for n, s in layers.items()
    )
    bpw = bits / sum(shapes[n][0] * shapes[n][1] for n in layers)
    return save_plan({"qscale_plan": 1, "bpw": bpw, "layers": layers, **extra}, path), bpw


EVAL = ["--json", "--max-tokens", "512", "--seq-len", "64"]


def _json(args: list[str]) -> dict:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_eval_uniform_plan_equals_eval_format(model_dir, shapes, tmp_path):
    plan, bpw = _write_plan(tmp_path / "uniform.json", dict.fromkeys(shapes, "int4-g16"), shapes)
    assert bpw == pytest.approx(5.0)
    by_plan = _json(["eval", "--model", str(model_dir), "--plan", str(plan), *EVAL])
    by_fmt = _json(["eval", "--model", str(model_dir), "-f", "int4-g16", *EVAL])
    assert by_plan["kld"] > 0
    assert by_plan["kld"] == pytest.approx(by_fmt["kld"], rel=1e-6)
    assert by_plan["quantized"]["nll"] == pytest.approx(by_fmt["quantized"]["nll"], rel=1e-6)
    assert by_plan["sqnr_db"] == pytest.approx(by_fmt["sqnr_db"], rel=1e-6)
    assert by_plan["plan"]["bpw"] == pytest.approx(bpw, rel=1e-12)


def test_eval_mixed_plan(model_dir, shapes, tmp_path):
    names = list(shapes)
    layers = {n: ("int8-pc" if "self_attn" in n else "int3-g16") for n in names[:-2]}  # two layers left float
    plan, bpw = _write_plan(tmp_path / "mixed.json", layers, shapes)
    out = _json(["eval", "--model", str(model_dir), "--plan", str(plan), *EVAL])
    assert math.isfinite(out["kld"]) and out["kld"] > 0
    assert out["plan"]["bpw"] == pytest.approx(bpw, rel=1e-12)
    assert out["format"].startswith("plan:")


def test_quantize_plan_reports_exactly_the_planned_layers(model_dir, shapes, tmp_path):
    from qscale.lm import load

    names = list(shapes)
    layers = {names[0]: "int4-g16", names[2]: "int8-pc", names[6]: "int3-g16", names[-1]: "nf4-g16"}
    plan, bpw = _write_plan(
        tmp_path / "p.json", layers, shapes, model={"name": "other", "identity": "sha256:0000000000000000"}
    )
    r = runner.invoke(app, ["quantize", "--model", str(model_dir), "--plan", str(plan), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert "warning" in r.stderr and "other" in r.stderr  # made for other weights
    assert set(out["layers"]) == set(layers)
    assert set(out["weight_stats"]) == set(layers)
    assert out["bits_per_element"] == pytest.approx(bpw, rel=1e-12)
    refs = {ref.name: ref for ref in linear_layers(load(str(model_dir)).model)}
    for n, spec in layers.items():
        w = refs[n].get_weight().detach()
        q = fake_quant(get_format(spec), w.clone())
        w64, q64 = w.double(), q.double()
        want = 10 * math.log10(float(w64.square().sum()) / float((w64 - q64).square().sum()))
        assert out["layers"][n]["sqnr_db"] == pytest.approx(want, rel=1e-6), n


def test_plan_option_refusals(model_dir, shapes, tmp_path):
    names = list(shapes)
    plan, _ = _write_plan(tmp_path / "p.json", {names[0]: "int4-g16"}, shapes)
    missing, _ = _write_plan(
        tmp_path / "missing.json", {names[0]: "int4-g16"}, {**shapes, "model.layers.9.mlp.up_proj": (64, 64)}
    )
    doc = json.loads(missing.read_text())
    doc["layers"]["model.layers.9.mlp.up_proj"] = "int4-g16"
    missing.write_text(json.dumps(doc))
    not_plan = tmp_path / "other.json"
    not_plan.write_text(json.dumps({"layers": {names[0]: "int4-g16"}}))
    m = ["--model", str(model_dir)]
    cases = [
        (["eval", *m, "--plan", str(plan), "-f", "int4-g16", *EVAL], "not both"),
        (["quantize", *m, "--plan", str(plan), "-f", "int4-g16"], "exactly one of"),
        (["quantize", *m], "exactly one of"),
        (["quantize", *m, "--plan", str(plan), "--include", "*q_proj"], "--include"),
        (["quantize", *m, "--plan", str(not_plan)], "not a qscale plan"),
        (["eval", *m, "--plan", str(not_plan), *EVAL], "not a qscale plan"),
        (["eval", *m, "--plan", str(tmp_path / "absent.json"), *EVAL], "does not exist"),
        (["eval", *m, "--plan", str(missing), *EVAL], "model.layers.9.mlp.up_proj"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        flat = " ".join(r.output.replace("│", " ").split())
        assert needle in flat, (args, r.output)
