"""The one-way house (docs/design-notes.md, "Layers"): every import of the package, including imports inside
functions and under ``TYPE_CHECKING``, goes to the importing module's own room or to a room of a lower rank; no
import cycle; function-local imports only of optional heavy dependencies; the core names no method and no dataset.

The graph is parsed from the sources (``ast``), not imported, so a deferred import cannot hide an edge.
"""

from __future__ import annotations

import ast
import os
import os.path as osp
import re
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PKG = osp.join(ROOT, "extensions", "vdreid")
DESIGN_NOTES = osp.join(ROOT, "docs", "design-notes.md")

#: third-party modules a function may import lazily: optional or heavy, needed only on some paths
LAZY_OK = {"faiss", "onnx", "onnxruntime", "matplotlib", "sklearn", "tensorboard", "torch.utils.tensorboard",
           "scipy", "psutil", "timm", "PIL", "safetensors", "safetensors.torch", "huggingface_hub"}
#: string literals naming a method or a dataset (the core asks the registries instead)
NAME_LITERAL = re.compile(
    r"""["'](agw|vd_official|bnneck|caj|deen|regdb[a-z_0-9]*|sysu[a-z_0-9-]*|llcm[a-z_0-9]*)["']""")
CORE = re.compile(r"vdreid\.(cli|builders|config|interop|engine|evaluation|tools)(\.|$)")


def _modules() -> dict[str, str]:
    mods = {}
    for dirpath, _, files in os.walk(PKG):
        for fn in files:
            if fn.endswith(".py"):
                rel = osp.relpath(osp.join(dirpath, fn), osp.dirname(PKG))[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = osp.join(dirpath, fn)
    return mods


MODS = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if MODS[module].endswith("__init__.py") else module.rsplit(".", 1)[0]
    if node.level:
        parts = base.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)])
        name = f"{base}.{node.module}" if node.module else base
    else:
        name = node.module or ""
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in MODS else name for a in node.names]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported name, line, inside a function)`` for every import statement of ``module``."""
    tree = ast.parse(open(MODS[module], encoding="utf-8").read())
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            local |= {id(n) for n in ast.walk(fn)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for t in _targets(module, node):
                out.append((t, node.lineno, id(node) in local))
    return out


def _resolve(name: str) -> str | None:
    while name and name not in MODS and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODS else None


def edges() -> dict[str, dict[str, int]]:
    """module -> {imported vdreid module: line}."""
    out: dict[str, dict[str, int]] = {m: {} for m in MODS}
    for m in MODS:
        for name, line, _ in _imports(m):
            t = _resolve(name)
            if t is not None and t != m:
                out[m].setdefault(t, line)
    return out


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "vdreid"


def layer_table() -> dict[str, int]:
    """room -> rank, read from the "Layers" table of docs/design-notes.md (``| rank | rooms |`` rows)."""
    text = open(DESIGN_NOTES, encoding="utf-8").read()
    section = text.split("## Layers", 1)[1]
    ranks: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|\s*([^|]+)\|", line)
        if m:
            for name in m.group(2).replace("`", "").split(","):
                if name.strip():
                    ranks[name.strip()] = int(m.group(1))
        elif ranks and not line.startswith("|") and line.strip():
            break
    return ranks


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_room_has_a_rank():
    ranks = layer_table()
    missing = sorted({room(m) for m in MODS} - set(ranks))
    assert not missing, f"rooms without a rank in docs/design-notes.md 'Layers': {missing}"
    stale = sorted(set(ranks) - {room(m) for m in MODS})
    assert not stale, f"docs/design-notes.md 'Layers' names rooms that do not exist: {stale}"


def test_no_import_cycle():
    cycles = _cycles(edges())
    assert not cycles, "import cycles (imports inside functions counted): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_upward_or_sideways_import():
    ranks = layer_table()
    bad = []
    for m, targets in edges().items():
        for t, line in targets.items():
            a, b = room(m), room(t)
            if a != b and ranks.get(b, 99) >= ranks.get(a, -1):
                bad.append(f"{osp.relpath(MODS[m], ROOT)}:{line} {m} -> {t} (room {a} rank {ranks.get(a)} -> room "
                           f"{b} rank {ranks.get(b)})")
    assert not bad, "imports that go up or sideways in the layer table:\n" + "\n".join(bad)


def test_function_local_imports_only_for_optional_heavy_dependencies():
    bad = []
    for m in MODS:
        for name, line, local in _imports(m):
            if not local:
                continue
            top = name.split(".")[0]
            if top == "vdreid" or (top not in LAZY_OK and name not in LAZY_OK):
                bad.append(f"{osp.relpath(MODS[m], ROOT)}:{line} imports {name} inside a function")
    assert not bad, "function-local imports of non-optional modules (import them at the top):\n" + "\n".join(bad)


def test_the_core_names_no_method_and_no_dataset():
    hits = []
    for m, path in MODS.items():
        if not CORE.match(m):
            continue
        for i, line in enumerate(open(path, encoding="utf-8"), 1):
            code = line.split("#", 1)[0]
            if NAME_LITERAL.search(code):
                hits.append(f"{osp.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not hits, "string literals naming a method or dataset in the core (ask the registries):\n" + "\n".join(hits)


@pytest.mark.parametrize("module", ["vdreid.compat", "vdreid.config"])
def test_foundations_import_no_higher_room(module):
    ranks = layer_table()
    ups = [t for t in edges()[module] if ranks[room(t)] >= ranks[room(module)] and room(t) != room(module)]
    assert not ups, f"{module} imports {ups}"
