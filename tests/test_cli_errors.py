"""The one error path of the CLI (issue 17): a user's mistake prints one line naming the problem, exit 2, no
traceback; a bug keeps its traceback. Walks ordinary mistakes through the real entry point, ``qscale.cli.main``."""

from __future__ import annotations

import pytest

from qscale.cli import main, user_error


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_tokenizer):
    from qscale.lm.zoo import random_model

    d = tmp_path_factory.mktemp("cli-err") / "m"
    lm = random_model("llama", shared_tokenizer)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


CASES = [
    (["quantize", "--model", "/nonexistent/model", "-f", "int4-g128"], "not found"),
    (["eval", "--model", "{empty}", "-f", "int4-g128"], "without config.json"),
    (["eval", "--model", "zoo:no-such-model"], "zoo model"),
    (["eval", "--model", "{model}", "--device", "cuda:7"], "--device cuda:7"),
    (["eval", "--model", "{model}", "--device", "tpu"], "unknown device"),
    (
        ["quantize", "--model", "{model}", "-f", "int4-g16", "--include", "nomatch*"],
        "matched no linear layer",
    ),
    (["eval", "--model", "{model}", "--batch-size", "0"], "batch-size"),
    (
        ["quantize", "--model", "{model}", "-f", "int4-g16", "--method", "gptq", "--calib-samples", "-3"],
        "calib-samples",
    ),
    (["quantize", "--model", "{model}", "-f", "int99"], "int99"),
    (["plan", "--model", "/nonexistent/model", "--target-bpw", "4"], "not found"),
    (["export", "{empty}/plan.json", "--to", "llama.cpp"], "does not exist"),
    (["eval", "--model", "{garbage_gguf}"], "not a GGUF file"),
    (["eval", "--model", "{empty_gguf}"], "is empty"),
]


@pytest.mark.parametrize(
    ("argv", "needle"), CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)]
)
def test_user_mistakes_are_one_line(argv, needle, model_dir, tmp_path, capsys, monkeypatch):
    if "cuda" in " ".join(argv):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "g.gguf").write_bytes(b"garbage, not a model\n")
    (tmp_path / "e.gguf").write_bytes(b"")
    subs = {
        "{model}": model_dir,
        "{empty}": empty,
        "{garbage_gguf}": tmp_path / "g.gguf",
        "{empty_gguf}": tmp_path / "e.gguf",
    }
    for key, val in subs.items():
        argv = [a.replace(key, str(val)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    text = out.err + out.out
    assert exc.value.code == 2, text
    assert "Traceback" not in text
    assert needle in text, text


def test_a_bug_keeps_its_traceback():
    class Bug(Exception):
        pass

    assert not user_error(Bug("x"))
    assert not user_error(ValueError("a plain ValueError is a bug"))
    from qscale.formats import FormatError
    from qscale.lm.loading import LoadError

    assert user_error(FormatError("x")) and user_error(LoadError("y"))
