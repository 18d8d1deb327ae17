"""Packaged English corpora: documents and deterministic train/validation/test splits.

Six plain-text corpora ship xz-compressed in ``data/corpora/`` (provenance in ``data/corpora/SOURCES.md``).
Each is cut into *documents* by a rule that fits its layout, and the documents are dealt into splits.

What a document is, per corpus (counts measured on the packaged files):

===============  ====================================================================  ======
corpus           document                                                              n_docs
===============  ====================================================================  ======
enwiki_gensim    one Wikipedia article (starts at a ``" = Title ="`` line)               106
austen           one chapter (``Chapter 12`` / ``CHAPTER XII`` lines start one;           269
                 title pages and end notes stay with their neighbouring chapter)
kjv              a passage of 25 consecutive verses (the file has one verse a line       1245
                 and no book/chapter markers; 25 is about a chapter's length)
shakespeare      a passage of 100 consecutive spoken lines (the file has no play          1114
                 markers)
mobydick         one chapter (``CHAPTER n.``; the front matter and the Epilogue are        137
                 documents too); the Project Gutenberg header and licence are dropped
lee_news         one news story (one a line)                                               300
===============  ====================================================================  ======

A user's own ``.txt`` file is accepted wherever a corpus name is: documents are separated by one or more
blank lines.

Splits. Documents are ranked by ``sha256(f"{salt}:{index}")`` (salt = corpus name, or ``"file"`` for a
user's file); the first ``round(0.05 * n)`` (at least 1) are *validation*, the next as many are *test*,
the rest *train*; each split lists its documents in their original order. So the splits are disjoint,
together cover every document exactly once, do not depend on the machine, Python's hash seed or the
order of calls, and only change if the corpus file changes. Example: ``enwiki_gensim`` has 106 articles,
``round(5.3) = 5`` go to validation, 5 to test and 97 to train.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from qscale.paths import repo_path
from qscale.registry import unknown_name_message

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The split names :func:`read_split` accepts."""

HELD_OUT_FRACTION = 0.05
"""Fraction of documents (rounded, at least one) in each of validation and test."""

KJV_VERSES_PER_DOC = 25
SHAKESPEARE_LINES_PER_DOC = 100


class CorpusError(ValueError):
    """An unknown corpus or split name, or an unusable corpus file."""


@dataclass(frozen=True)
class CorpusInfo:
    """One corpus: where it lives, how big it is and under which licence its text is.

    ``bytes`` is the UTF-8 size of the decompressed text after the per-corpus cleaning (documents joined
    by a blank line are not counted twice); ``n_docs`` counts documents over all three splits.
    """

    name: str
    path: str
    bytes: int
    n_docs: int
    licence: str
    description: str


@dataclass(frozen=True)
class _CorpusSpec:
    name: str
    licence: str
    description: str


_SPECS: dict[str, _CorpusSpec] = {
    s.name: s
    for s in (
        _CorpusSpec(
            "enwiki_gensim", "CC BY-SA (Wikipedia)", "106 English Wikipedia articles (gensim test data)"
        ),
        _CorpusSpec("austen", "public domain", "Jane Austen's six novels, by chapter"),
        _CorpusSpec("kjv", "public domain", "King James Bible, 25-verse passages"),
        _CorpusSpec("shakespeare", "public domain", "38 Shakespeare plays, spoken lines, 100-line passages"),
        _CorpusSpec("mobydick", "public domain", "Moby-Dick, by chapter"),
        _CorpusSpec(
            "lee_news", "LGPL-2.1 (distributed with gensim)", "Lee background news corpus, 300 stories"
        ),
    )
}


def data_dir() -> Path:
    """The directory holding the packaged ``*.txt.xz`` corpora (``<repo>/data/corpora``, :mod:`qscale.paths`)."""
    return repo_path("data/corpora", option="a path to a .txt corpus")


def corpus_names() -> list[str]:
    """Names of the packaged corpora, in a fixed order."""
    return list(_SPECS)


def _unknown(kind: str, name: str, valid: list[str]) -> CorpusError:
    return CorpusError(unknown_name_message(name, valid, kind))


def _resolve(name: str | Path) -> tuple[str, Path, bool]:
    """(key, path, packaged?) for a corpus name or a path to a user's ``.txt`` file."""
    s = str(name)
    if s in _SPECS:
        path = data_dir() / f"{s}.txt.xz"
        if not path.is_file():
            raise CorpusError(f"corpus {s!r} is missing its file {path}; is data/corpora/ checked out?")
        return s, path, True
    p = Path(s).expanduser()
    if p.suffix in (".txt", ".xz") and p.is_file():
        return str(p.resolve()), p.resolve(), False
    if p.suffix in (".txt", ".xz"):
        raise CorpusError(f"corpus file {s!r} does not exist")
    raise _unknown("corpus", s, corpus_names() + ["<path/to/file.txt>"])


@functools.lru_cache(maxsize=16)
def _raw_text(path: Path) -> str:
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    text = data.decode("utf-8-sig")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _chunks(lines: list[str], size: int) -> list[str]:
    return ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def _split_before(lines: list[str], starts: re.Pattern[str], min_chars: int = 200) -> list[str]:
    """Cut ``lines`` before every line matching ``starts``, unless the piece so far has fewer than
    ``min_chars`` characters (a title page stays with the chapter after it); drop empty pieces."""
    docs: list[list[str]] = [[]]
    for line in lines:
        if starts.match(line) and sum(len(x.strip()) for x in docs[-1]) >= min_chars:
            docs.append([])
        docs[-1].append(line)
    return [t for t in ("\n".join(d).strip("\n") for d in docs) if t.strip()]


_WIKI_TITLE = re.compile(r"^ = .* =\s*$")
_AUSTEN_CHAPTER = re.compile(r"^(Chapter|CHAPTER) ([0-9]+|[IVXLC]+)\b")
_MOBY_CHAPTER = re.compile(r"^(CHAPTER [0-9]+\.|Epilogue\s*$)")
_MOBY_START = re.compile(r"^\*\*\* START OF TH(IS|E) PROJECT GUTENBERG", re.M)
_MOBY_END = re.compile(r"^(\*\*\* END OF TH(IS|E) PROJECT GUTENBERG|End of Project Gutenberg)", re.M)
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def _documents_of(key: str, text: str, packaged: bool) -> list[str]:
    if not packaged:
        return [d.strip("\n") for d in _BLANK_LINES.split(text) if d.strip()]
    lines = text.split("\n")
    if key == "enwiki_gensim":
        return _split_before(lines, _WIKI_TITLE)
    if key == "austen":
        return _split_before(lines, _AUSTEN_CHAPTER)
    if key == "mobydick":
        start, end = _MOBY_START.search(text), _MOBY_END.search(text)
        body = text[start.end() : end.start()] if start and end else text
        body = body.split("\n", 1)[1] if start else body  # rest of the START line
        return _split_before(body.split("\n"), _MOBY_CHAPTER)
    if key == "kjv":
        return _chunks([x for x in lines if x.strip()], KJV_VERSES_PER_DOC)
    if key == "shakespeare":
        return _chunks([x for x in lines if x.strip()], SHAKESPEARE_LINES_PER_DOC)
    if key == "lee_news":
        return [x.strip() for x in lines if x.strip()]
    raise AssertionError(key)  # pragma: no cover - every packaged name has a rule above


@functools.lru_cache(maxsize=16)
def _documents(key: str, path: Path, packaged: bool) -> tuple[str, ...]:
    docs = tuple(_documents_of(key, _raw_text(path), packaged))
    if not docs:
        raise CorpusError(f"corpus {key!r} has no documents (file {path} is empty?)")
    return docs


def documents(name: str | Path) -> list[str]:
    """All documents of a corpus, in file order (the union of the three splits)."""
    return list(_documents(*_resolve(name)))


def split_assignment(n_docs: int, salt: str) -> list[str]:
    """The split of each of ``n_docs`` documents, by the rule in the module docstring.

    >>> split_assignment(4, "x").count("train"), split_assignment(107, "x").count("test")
    (2, 5)
    """
    n_held = max(1, round(HELD_OUT_FRACTION * n_docs))
    if n_docs < 3:
        raise CorpusError(
            f"a corpus needs at least 3 documents to split, got {n_docs} "
            "(in a .txt file, separate documents by a blank line)"
        )
    n_held = min(n_held, (n_docs - 1) // 2)
    order = sorted(range(n_docs), key=lambda i: hashlib.sha256(f"{salt}:{i}".encode()).digest())
    out = ["train"] * n_docs
    for i in order[:n_held]:
        out[i] = "validation"
    for i in order[n_held : 2 * n_held]:
        out[i] = "test"
    return out


@functools.lru_cache(maxsize=64)
def _split(key: str, path: Path, packaged: bool, split: str) -> tuple[str, ...]:
    docs = _documents(key, path, packaged)
    assign = split_assignment(len(docs), key if packaged else "file")
    return tuple(d for d, s in zip(docs, assign, strict=True) if s == split)


def read_split(name: str | Path, split: str) -> list[str]:
    """Documents of one split of a corpus, in file order.

    ``name`` is a packaged corpus (see :func:`list_corpora`) or a path to a ``.txt`` file whose documents
    are separated by blank lines. ``split`` is ``"train"``, ``"validation"`` or ``"test"``.
    Decompression and splitting are cached; the returned list is a fresh copy each call.
    """
    if split not in SPLITS:
        raise _unknown("split", str(split), list(SPLITS))
    return list(_split(*_resolve(name), split))


def corpus_info(name: str | Path) -> CorpusInfo:
    """Size, document count and licence of one corpus."""
    key, path, packaged = _resolve(name)
    docs = _documents(key, path, packaged)
    spec = _SPECS.get(key)
    return CorpusInfo(
        name=key,
        path=str(path),
        bytes=sum(len(d.encode("utf-8")) for d in docs),
        n_docs=len(docs),
        licence=spec.licence if spec else "user file",
        description=spec.description if spec else "user text file",
    )


def list_corpora() -> list[CorpusInfo]:
    """Every packaged corpus with its size and licence (decompresses each once; cached)."""
    return [corpus_info(n) for n in corpus_names()]
