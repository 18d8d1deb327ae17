"""One helper for every name lookup: aliases, "did you mean ...?" and one message style.

>>> lookup({"int4-pc": 1, "int8-pc": 2}, "int4-p", what="format")
Traceback (most recent call last):
...
qscale.registry.UnknownName: unknown format 'int4-p'. Did you mean 'int4-pc'? Valid choices: int4-pc, int8-pc.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that is not in a registry; the message names the close matches and the valid choices."""


def close_matches(word: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` choices close to ``word``: difflib's close matches, else the choices that start with ``word``,
    else those that contain it (case-insensitive, two characters at least; ``"enwik"`` -> ``["enwiki_gensim"]``,
    which difflib misses at ratio 0.56)."""
    word = str(word)
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(word, choices, n=n, cutoff=cutoff)
    low = word.strip().lower()
    if close or len(low) < 2:
        return close
    prefix = [c for c in choices if c.lower().startswith(low)]
    return (prefix or [c for c in choices if low in c.lower()])[:n]


def did_you_mean(word: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """``" Did you mean 'x'?"`` (or ``" Did you mean 'x' or 'y'?"``), or ``""`` when nothing is close
    (:func:`close_matches`)."""
    close = close_matches(word, choices, n=n, cutoff=cutoff)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def unknown_name_message(
    word: str, choices: Iterable[str], what: str, n: int = 1, cutoff: float = 0.6
) -> str:
    """The one message style: ``unknown <what> 'x'. Did you mean 'y'? Valid choices: a, b, c.``"""
    choices = list(choices)
    shown = (
        ", ".join(choices)
        if len(choices) <= 40
        else ", ".join(choices[:40]) + f", ... ({len(choices)} in all)"
    )
    return f"unknown {what} {str(word)!r}.{did_you_mean(word, choices, n=n, cutoff=cutoff)} Valid choices: {shown}."


def lookup(
    registry: Mapping[str, T],
    name: str,
    *,
    what: str,
    aliases: Mapping[str, str] | None = None,
    error: type[Exception] = UnknownName,
) -> T:
    """``registry[name]`` after resolving ``aliases``; raise ``error`` with :func:`unknown_name_message`."""
    key = str(name).strip()
    if aliases and key in aliases:
        key = aliases[key]
    if key in registry:
        return registry[key]
    raise error(unknown_name_message(name, list(registry), what))


__all__ = ["UnknownName", "close_matches", "did_you_mean", "lookup", "unknown_name_message"]
