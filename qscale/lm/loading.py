"""Load a causal LM with its tokenizer and facts: HF directories, zoo names and GGUF files.

>>> lm = load("zoo:llama-s")                        # doctest: +SKIP
>>> lm.facts.n_nonembed, lm.facts.identity          # doctest: +SKIP

Sources, tried in this order:

* ``"panel:<name>"``: a real model built by ``qscale panel build`` (``<panel root>/<name>``, an ordinary HF
  directory whose ``qscale_panel.json`` carries provenance and ``train_tokens``).
* ``"zoo:<name>"``: ``<zoo root>/<name>`` (root = ``zoo_root``, ``$QSCALE_ZOO_DIR`` or ``~/.cache/qscale/zoo``).
  A model that has not been trained is an error telling you to run ``qscale zoo train``.
* a path ending in ``.gguf``: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``; transformers
  dequantizes every tensor to the requested dtype (needs the ``gguf`` package). The weights then already sit on
  the file's low-bit grid.
* a local directory with ``config.json`` and ``*.safetensors`` or ``pytorch_model*.bin`` weights. A directory
  with ``qscale_zoo.json`` is a zoo checkpoint: its facts carry ``train_tokens`` and the zoo identity.

Identity of non-zoo checkpoints: ``"sha256:"`` + the first 16 hex digits of the SHA-256 over the weight files'
bytes (sorted by name). It is computed while loading (about 1 s per GB) and memoised per process on
(path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qscale.lm.facts import ModelFacts, model_facts

ZOO_META = "qscale_zoo.json"
PANEL_META = "qscale_panel.json"  # written by qscale.lm.panel


class LoadError(ValueError):
    """A model source that cannot be loaded, with the reason and what to do."""


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer, its :class:`ModelFacts` and the name it was loaded by."""

    model: Any
    tokenizer: Any
    facts: ModelFacts
    name: str


def default_zoo_root() -> Path:
    """``$QSCALE_ZOO_DIR`` if set, else ``~/.cache/qscale/zoo``."""
    env = os.environ.get("QSCALE_ZOO_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qscale" / "zoo"


def _weight_files(d: Path) -> list[Path]:
    files = sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    return files


@functools.lru_cache(maxsize=64)
def _sha256_files(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):  # noqa: B023 - f is bound per iteration
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def weights_identity(files: list[Path]) -> str:
    """``"sha256:<16 hex>"`` over the bytes of ``files`` in the given order."""
    stats = [f.stat() for f in files]
    return _sha256_files(tuple(str(f) for f in files), tuple((s.st_size, s.st_mtime_ns) for s in stats))


def _zoo_identity(meta: dict[str, Any]) -> str:
    return f"zoo:{meta['name']}@{meta['config_hash']}/{meta['seed']}"


def _keep_declared_add_bos(tokenizer: Any, directory: Path) -> None:
    """Carry the checkpoint's declared ``add_bos_token`` (tokenizer_config.json) onto the tokenizer.

    transformers 5 reads it for some tokenizer classes only (a ``TokenizersBackend`` ignores it), so it is put
    in ``tokenizer.init_kwargs``, where :func:`qscale.corpora.windows.model_adds_bos` reads it.
    """
    cfg_path = directory / "tokenizer_config.json"
    kwargs = getattr(tokenizer, "init_kwargs", None)
    if not cfg_path.is_file() or not isinstance(kwargs, dict) or kwargs.get("add_bos_token") is not None:
        return
    try:
        declared = json.loads(cfg_path.read_text()).get("add_bos_token")
    except (OSError, ValueError):
        return
    if isinstance(declared, bool):
        kwargs["add_bos_token"] = declared


def resolve_zoo(name: str, zoo_root: str | Path | None = None) -> Path:
    """Directory of zoo model ``name`` (without the ``zoo:`` prefix); error if it is not trained."""
    root = Path(zoo_root).expanduser() if zoo_root is not None else default_zoo_root()
    d = root / name
    if (d / ZOO_META).is_file():
        return d
    from qscale.lm.zoo import zoo_names

    known = zoo_names()
    if name not in known:
        from qscale.registry import unknown_name_message

        raise LoadError(unknown_name_message(name, known, "zoo model"))
    from qscale.lm.zoo import preset_of

    raise LoadError(
        f"zoo model {name!r} is not trained under {root}. "
        f"Train it with `qscale zoo train --preset {preset_of(name)} --root {root}` "
        "(or point $QSCALE_ZOO_DIR at a zoo that has it)."
    )


def check_device(device: str) -> None:
    """A clear :class:`LoadError` for a device this torch cannot use (``cuda`` on a CPU build, a bad index)."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cpu":
        return
    if kind != "cuda":
        raise LoadError(f"unknown device {device!r}; valid: cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise LoadError(
            f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu"
        )
    idx = str(device).split(":")[1] if ":" in str(device) else "0"
    if not idx.isdigit() or int(idx) >= torch.cuda.device_count():
        raise LoadError(
            f"--device {device}: valid CUDA devices are cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )


def load(
    name_or_path: str | os.PathLike[str],
    dtype: Any = None,
    device: str = "cpu",
    attn_implementation: str = "eager",
    zoo_root: str | Path | None = None,
) -> LoadedModel:
    """Load a causal LM for measurement: eval mode, on ``device``, in ``dtype`` (default float32).

    ``attn_implementation="eager"`` keeps double backward (Hessian-vector products) possible.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qscale.progress import quiet_third_party

    check_device(device)
    dtype = torch.float32 if dtype is None else dtype
    src = str(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    meta: dict[str, Any] | None = None
    train_tokens: int | None = None
    if src.startswith("zoo:"):
        path = resolve_zoo(src[4:], zoo_root)
        name = src
    elif src.startswith("panel:"):
        from qscale.lm.panel import resolve_panel

        path = resolve_panel(src[6:])
        name = src
    else:
        path = Path(src).expanduser()
        name = src
        if not path.exists():
            raise LoadError(
                f"model {src!r} not found: give a local HF directory, a .gguf file or 'zoo:<name>' "
                "(see `qscale zoo list`); nothing is downloaded from a hub"
            )

    if path.is_file():
        if path.suffix != ".gguf":
            raise LoadError(f"{src!r} is a file but not a .gguf file; give a .gguf file or an HF directory")
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            what = "empty" if not magic else "not a GGUF file (no GGUF magic bytes at its start)"
            raise LoadError(f"{src!r} is {what}; give a llama.cpp .gguf file or an HF directory")
        try:
            import gguf  # noqa: F401
        except ImportError as err:
            raise LoadError(
                "loading .gguf files needs the `gguf` package: pip install 'qscale[gguf]'"
            ) from err
        with quiet_third_party():  # qscale shows its own progress; no converter or "Loading weights" bars
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True, **kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(
                str(path.parent), gguf_file=path.name, local_files_only=True
            )
        identity = weights_identity([path])
    else:
        if not (path / "config.json").is_file():
            raise LoadError(f"{src!r} is a directory without config.json; not a transformers checkpoint")
        files = _weight_files(path)
        if not files:
            raise LoadError(f"{src!r} has no *.safetensors or pytorch_model*.bin weight files")
        with quiet_third_party():
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise LoadError(f"{src!r} has no usable tokenizer files: {err}") from err
        _keep_declared_add_bos(tokenizer, path)
        if (path / ZOO_META).is_file():
            meta = json.loads((path / ZOO_META).read_text())
            identity = _zoo_identity(meta)
        else:
            identity = weights_identity(files)
            if (path / PANEL_META).is_file():
                panel_meta = json.loads((path / PANEL_META).read_text())
                train_tokens = panel_meta.get("train_tokens")
                name = f"panel:{panel_meta['name']}"

    model.to(device)
    model.eval()
    if meta and meta.get("train_tokens") is not None:
        train_tokens = int(meta["train_tokens"])
    fact_name = f"zoo:{meta['name']}" if meta else name
    facts = model_facts(model, name=fact_name, identity=identity, train_tokens=train_tokens)
    return LoadedModel(model=model, tokenizer=tokenizer, facts=facts, name=fact_name)
