"""Default paths into the repository: ``data/``, ``models/``, ``reports/``.

qscale's defaults (the run store ``data/runs.sqlite``, the shipped laws ``models/``, the published results
``data/public/results.csv``, the packaged corpora ``data/corpora/``) are files of the repository, not of the
Python package. They are found under the *project root*: ``$QSCALE_ROOT`` when it is set, else the source checkout
qscale is imported from (an editable install). An installed wheel has no checkout, so a default asked for there is
a one-line :class:`PathError` naming the file and the option (or ``$QSCALE_ROOT``) that gives it::

    >>> repo_path("data/runs.sqlite", option="--store")  # doctest: +SKIP
    PosixPath('/work/main/data/runs.sqlite')
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable naming a folder laid out like the repository (``data/``, ``models/``).
ENV_VAR = "QSCALE_ROOT"

__all__ = ["ENV_VAR", "PathError", "checkout_root", "model_slug", "project_root", "repo_path"]


class PathError(ValueError):
    """A default path into the repository, asked for where there is none (an installed wheel)."""


def checkout_root() -> Path | None:
    """The source checkout this qscale is imported from (the folder holding ``pyproject.toml`` and ``qscale/``),
    or None when qscale is installed from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def project_root() -> Path | None:
    """``$QSCALE_ROOT`` when set, else :func:`checkout_root` (None: neither)."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else checkout_root()


def repo_path(rel: str | Path, option: str | None = None) -> Path:
    """``<project root>/rel``, the default for ``option``; without a project root a :class:`PathError` that names
    ``rel``, ``option`` and ``$QSCALE_ROOT``. Whether the file exists is the caller's question."""
    root = project_root()
    if root is None:
        give = f"give {option}, or set ${ENV_VAR}" if option else f"set ${ENV_VAR}"
        raise PathError(
            f"no default {Path(rel).as_posix()}: qscale runs from an installed package, not a checkout; "
            f"{give} to a folder holding the repository's data/ and models/"
        )
    return root / rel


def model_slug(name: str) -> str:
    """A model name as a file-name part of a result: ``panel:smollm2-135m`` -> ``smollm2-135m``,
    ``zoo:tiny-opt-m`` -> ``zoo_tiny-opt-m``, ``/ckpt/dir`` -> ``_ckpt_dir``."""
    return name.removeprefix("panel:").replace(":", "_").replace("/", "_")
