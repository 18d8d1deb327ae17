"""The dependency rule, enforced: a lower layer never imports a higher one, lazily or not (every import
statement of every module, function bodies included, is read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import qscale

ROOT = Path(qscale.__file__).parent

#: Lowest first. A module may import its own layer and the layers before it. The bottom layer is the helpers every
#: layer uses: name lookups (registry.py), progress display (progress.py), default paths (paths.py).
LAYERS = (
    ("registry", "progress", "paths"),
    ("formats",),
    ("kernels",),
    ("corpora", "lm"),
    ("quantize",),
    ("measure",),
    ("features",),
    ("collect",),
    ("laws",),
    ("workflows",),
    ("service", "report", "cli"),
)


#: Upward imports that exist today and are to be removed by the renovation (issue 16); nothing may be added.
#: Empty since issue 16 §3: the kernel entry points take a format, and the lens study is a workflow.
KNOWN: set[tuple[str, str]] = set()


def _rank(part: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    return None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _layer_of(path: Path) -> str:
    """The layer a file belongs to: its folder under qscale/, or the module name (registry.py, cli.py);
    qscale/__init__.py is the public API on top (like cli)."""
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
        return "cli" if rel.stem == "__init__" else rel.stem
    return rel.parts[0]


def _upward_imports() -> dict[tuple[str, str], list[str]]:
    """``{(layer, higher layer): ["file imports module", ...]}`` over every module of the package."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in ROOT.rglob("*.py"):
        own = _layer_of(path)
        if _rank(own) is None:
            continue
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] != "qscale" or len(parts) < 2 or _rank(parts[1]) is None:
                continue
            if _rank(parts[1]) > _rank(own):
                found.setdefault((own, parts[1]), []).append(f"{path.relative_to(ROOT)} imports {mod}")
    return found


def test_no_new_upward_import():
    new = {k: v for k, v in _upward_imports().items() if k not in KNOWN}
    assert not new, "upward imports (a lower layer importing a higher one):\n" + "\n".join(
        line for v in new.values() for line in v
    )


def test_known_list_is_not_stale():
    """When the renovation removes an upward import, its KNOWN entry must go too (the list only shrinks)."""
    found = set(_upward_imports())
    assert found >= KNOWN, f"stale KNOWN entries: {sorted(KNOWN - found)}"


def test_every_module_has_a_layer():
    """A new top-level module or folder of qscale/ must be placed in LAYERS, or the walk would not check it."""
    placed = {name for names in LAYERS for name in names}
    unplaced = sorted(_layer_of(path) for path in ROOT.rglob("*.py") if _rank(_layer_of(path)) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {sorted(set(unplaced))} (placed: {sorted(placed)})"
