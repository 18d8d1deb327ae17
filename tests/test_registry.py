"""The one name-lookup helper: aliases, "did you mean", one message style, and the prefix/substring fallback."""

from __future__ import annotations

import pytest

from qscale.registry import UnknownName, close_matches, did_you_mean, lookup, unknown_name_message

CORPORA = ["enwiki_gensim", "austen", "kjv", "shakespeare", "mobydick", "lee_news"]


def test_close_matches_difflib_first_then_prefix_then_substring():
    assert close_matches("austn", CORPORA) == ["austen"]  # difflib
    assert close_matches("enwik", CORPORA) == ["enwiki_gensim"]  # difflib misses it (ratio 0.56): prefix
    assert close_matches("ENWIKI", CORPORA) == ["enwiki_gensim"]  # case-insensitive
    assert close_matches("news", CORPORA) == ["lee_news"]  # substring
    # every prefix match, in order
    assert close_matches("mx", ["mxfp4", "int4", "mxfp8"], n=3) == ["mxfp4", "mxfp8"]
    assert close_matches("zzz", CORPORA) == []
    assert close_matches("e", CORPORA) == []  # one character suggests nothing
    assert close_matches("", CORPORA) == []


def test_message_style():
    assert did_you_mean("enwik", CORPORA) == " Did you mean 'enwiki_gensim'?"
    assert did_you_mean("zzz", CORPORA) == ""
    assert unknown_name_message("enwik", CORPORA[:2], "corpus") == (
        "unknown corpus 'enwik'. Did you mean 'enwiki_gensim'? Valid choices: enwiki_gensim, austen."
    )
    many = [f"m{i}" for i in range(50)]
    assert unknown_name_message("q", many, "model").endswith(", m39, ... (50 in all).")


def test_lookup_aliases_and_error_class():
    reg = {"rtn": 1, "gptq": 2}
    assert lookup(reg, " rtn ", what="method") == 1
    assert lookup(reg, "round-to-nearest", what="method", aliases={"round-to-nearest": "rtn"}) == 1
    with pytest.raises(UnknownName, match="unknown method 'rnt'. Did you mean 'rtn'?"):
        lookup(reg, "rnt", what="method")

    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match="Valid choices: rtn, gptq."):
        lookup(reg, "awq", what="method", error=MyError)
