"""Packaged corpora: document rules, split invariants (disjoint, complete, stable) and errors."""

from __future__ import annotations

import hashlib
import lzma
import re
from collections import Counter

import pytest

from qscale.corpora import CorpusError, corpus_names, documents, list_corpora, read_split
from qscale.corpora.text import SPLITS, data_dir

NAMES = ["enwiki_gensim", "austen", "kjv", "shakespeare", "mobydick", "lee_news"]


def _raw(name: str) -> str:
    return lzma.decompress((data_dir() / f"{name}.txt.xz").read_bytes()).decode("utf-8-sig")


def test_the_six_corpora_are_listed_with_sizes():
    assert corpus_names() == NAMES
    infos = {i.name: i for i in list_corpora()}
    assert set(infos) == set(NAMES)
    for name in NAMES:
        assert infos[name].n_docs == len(documents(name))
        # cleaned text is within a few percent of the raw decompressed size (moby-dick loses its licence)
        raw = len(_raw(name).encode("utf-8"))
        assert 0.9 * raw < infos[name].bytes <= raw


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_complete_and_ordered(name):
    docs = documents(name)
    parts = {s: read_split(name, s) for s in SPLITS}
    assert sum((Counter(p) for p in parts.values()), Counter()) == Counter(docs)
    n_held = max(1, round(0.05 * len(docs)))
    assert len(parts["validation"]) == len(parts["test"]) == n_held
    assert len(parts["train"]) == len(docs) - 2 * n_held
    # each split keeps file order: it is a subsequence of the documents (lee_news repeats a story)
    for p in parts.values():
        it = iter(docs)
        assert all(any(d == x for x in it) for d in p)


@pytest.mark.parametrize("name", ["enwiki_gensim", "lee_news"])
def test_split_matches_an_independent_recomputation(name):
    """Re-derive the rule from its description: rank indices by sha256("<name>:<i>")."""
    docs = documents(name)
    n_held = max(1, round(0.05 * len(docs)))
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"{name}:{i}".encode()).hexdigest())
    assert read_split(name, "validation") == [docs[i] for i in sorted(ranked[:n_held])]
    assert read_split(name, "test") == [docs[i] for i in sorted(ranked[n_held : 2 * n_held])]


def test_enwiki_held_out_articles_are_pinned():
    """Stability across releases: changing the split rule must be a deliberate, visible change."""
    titles = {s: [d.split("\n")[0].strip(" =") for d in read_split("enwiki_gensim", s)] for s in SPLITS}
    assert titles["validation"] == [
        "Ayn Rand",
        "Alain Connes",
        "Amphibian",
        "A Modest Proposal",
        "List of anthropologists",
    ]
    assert titles["test"] == [
        "Achilles",
        "List of Atlas Shrugged characters",
        "Ada",
        "Aa River",
        "Actinopterygii",
    ]


def test_document_rules_match_the_raw_files():
    raw = _raw("enwiki_gensim")
    n_titles = len(re.findall(r"^ = .* =$", raw, flags=re.M))
    wiki = documents("enwiki_gensim")
    assert len(wiki) == n_titles == 106
    assert all(d.startswith(" = ") for d in wiki)

    verses = [x for x in _raw("kjv").split("\n") if x.strip()]
    kjv = documents("kjv")
    assert sum(d.count("\n") + 1 for d in kjv) == len(verses)
    assert kjv[0].split("\n")[0] == verses[0] and kjv[1].split("\n")[0] == verses[25]

    lee = documents("lee_news")
    assert len(lee) == 300

    moby = documents("mobydick")
    assert len(moby) == 137  # front matter + 135 chapters + Epilogue
    assert moby[-1].startswith("Epilogue") and moby[1].startswith("CHAPTER 1. Loomings.")
    assert not any("*** START" in d or "PROJECT GUTENBERG-tm" in d.upper() for d in moby)
    assert all("\r" not in d for d in moby) and not moby[0].startswith("\ufeff")

    austen = documents("austen")
    n_chapters = len(re.findall(r"^(Chapter|CHAPTER) ([0-9]+|[IVXLC]+)\b", _raw("austen"), flags=re.M))
    assert len(austen) == n_chapters  # title pages join the following chapter
    assert austen[0].startswith("PRIDE AND PREJUDICE") and "Chapter 1" in austen[0]


def test_read_split_returns_a_fresh_list():
    a = read_split("lee_news", "test")
    a.clear()
    assert len(read_split("lee_news", "test")) == 15


def test_user_text_file(tmp_path):
    docs = [f"document {i}\nsecond line {i}" for i in range(40)]
    path = tmp_path / "mine.txt"
    path.write_text("\n\n".join(docs[:20]) + "\n\n\n  \n" + "\n\n".join(docs[20:]) + "\n")
    parts = {s: read_split(str(path), s) for s in SPLITS}
    assert sorted(sum(parts.values(), [])) == sorted(docs)
    assert len(parts["test"]) == 2


def test_bad_names_give_helpful_errors(tmp_path):
    with pytest.raises(CorpusError, match=r"Did you mean 'enwiki_gensim'\?.*lee_news"):
        read_split("enwiki", "test")
    with pytest.raises(CorpusError, match=r"Did you mean 'validation'\?"):
        read_split("kjv", "valid")
    with pytest.raises(CorpusError, match="does not exist"):
        read_split(str(tmp_path / "nope.txt"), "train")
    one = tmp_path / "one.txt"
    one.write_text("a single document\nwith no blank line\n")
    with pytest.raises(CorpusError, match="blank line"):
        read_split(str(one), "train")
