"""collect's planner asks the method whether *its parameters* need calibration (issue 16 bug): a static-scale
act-quant run, or one with GPTQ weights, gets the spec's calibrations; a dynamic RTN act-quant run gets none."""

from __future__ import annotations

from qscale.collect.spec import parse_spec, plan


def _spec(method):
    return parse_spec(
        {
            "name": "t",
            "models": ["zoo:tiny-llama-s"],
            "formats": ["int8-pc"],
            "methods": [method],
            "calibration": {"corpus": "enwiki_gensim", "n_samples": 4, "seq_len": 32, "seed": 0},
            "eval": {"corpus": "enwiki_gensim", "split": "test", "seq_len": 32, "max_tokens": 256},
        }
    )


def test_static_act_quant_is_planned_with_calibration():
    runs = plan(_spec({"name": "act-quant", "params": {"a_scale": "static"}}))
    assert len(runs) == 1 and runs[0].calibration is not None


def test_gptq_weights_under_act_quant_are_planned_with_calibration():
    runs = plan(_spec({"name": "act-quant", "params": {"w_method": "gptq"}}))
    assert runs[0].calibration is not None


def test_dynamic_act_quant_needs_no_calibration():
    runs = plan(_spec({"name": "act-quant", "params": {"a_scale": "dynamic"}}))
    assert runs[0].calibration is None
