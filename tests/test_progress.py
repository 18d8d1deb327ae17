"""Progress (issue 17): rich rows on stderr with --progress, nothing with --no-progress, --json stdout stays JSON,
and no tqdm bars from transformers where qscale loads, converts or saves models."""

from __future__ import annotations

import json

import pytest

from qscale.cli import main
from qscale.progress import Progress, active, quiet_third_party, track, wanted


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_tokenizer):
    from qscale.lm.zoo import random_model

    d = tmp_path_factory.mktemp("progress") / "m"
    lm = random_model("llama", shared_tokenizer)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


EVAL = ["--max-tokens", "600", "--seq-len", "32", "--batch-size", "2", "-f", "int4-g16", "--json"]
LANDSCAPE = ["--samples", "2", "--iters", "2", "--n-seqs", "1", "--seq-len", "16", "-f", "int4-g16", "--json"]
ROWS = {"eval": ("load", "float reference", "evaluate"), "landscape": ("load", "Hessian trace", "eigenvalue")}


@pytest.mark.parametrize("cmd", ["eval", "landscape"])
def test_progress_goes_to_stderr_and_json_stays_clean(cmd, model_dir, capsys):
    args = EVAL if cmd == "eval" else LANDSCAPE
    main([cmd, "--model", str(model_dir), *args, "--progress"])
    out = capsys.readouterr()
    json.loads(out.out)  # stdout is exactly one JSON document
    for row in ROWS[cmd]:
        assert row in out.err, out.err

    main([cmd, "--model", str(model_dir), *args, "--no-progress"])
    quiet = capsys.readouterr()
    assert json.loads(quiet.out).keys() == json.loads(out.out).keys()
    assert quiet.err == ""  # no progress text at all (and no third-party bars)


def test_not_given_means_a_terminal_only(monkeypatch):
    import sys

    assert wanted(True) and not wanted(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not wanted(None)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert wanted(None)


def test_disabled_progress_is_silent_and_nested_rows_share_one_display(capsys):
    with Progress(False) as p:
        assert not active()
        assert list(p.track(range(3), "x")) == [0, 1, 2]
        with p.step("y") as row:
            row.advance(note="z")
    assert capsys.readouterr().err == ""

    with Progress(True) as outer:
        assert active()
        with Progress(True) as inner:  # a library's own display inside a command's: rows go to the outer one
            assert inner._rich is outer._rich
        assert list(track(range(4), "batches")) == [0, 1, 2, 3]
        task = outer.task("profile", total=None)
        task.callback()(3, 8)
        task.done()
        descriptions = [t.description for t in outer._rich.tasks]
    assert not active()
    assert descriptions == ["batches", "profile"]
    assert all(t.finished for t in outer._rich.tasks)
    err = capsys.readouterr().err
    assert "batches" in err and "profile" in err
    assert list(track(range(2), "quiet", enabled=False)) == [0, 1]


def test_third_party_bars_are_silenced_where_qscale_calls_them(model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))  # bars on: "Loading weights" shows
        assert "Loading weights" in capsys.readouterr().err
        with quiet_third_party():
            AutoModelForCausalLM.from_pretrained(str(model_dir))
            assert not hf_logging.is_progress_bar_enabled()
            for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                pass
            model.save_pretrained(tmp_path / "saved")  # "Writing model shards"
            with quiet_third_party():  # nested (the service loads in threads): restored by the outermost
                pass
            assert gguf_utils.tqdm is not original
        assert gguf_utils.tqdm is original
        err = capsys.readouterr().err
        assert "Converting" not in err and "Writing model shards" not in err and "Loading weights" not in err
    finally:
        (hf_logging.enable_progress_bar if was_on else hf_logging.disable_progress_bar)()
