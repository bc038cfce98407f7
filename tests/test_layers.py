"""The package's layers (docs/architecture.md): imports go down, and there is no cycle.

Every import of a metakern module is counted, at module level or inside a function,
read from the source with ``ast``.
"""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metakern")

# layer of each module, by name prefix (longest prefix wins); higher may import lower
LAYERS = {
    "metakern._contract": 0, "metakern.version": 0,
    "metakern.triton": 1, "metakern.backends": 1, "metakern._C": 1,
    "metakern._ops": 2,
    "metakern._validate": 3,
    "metakern": 4,  # the public modules: functional, learners, nn, generic, tasks, train, cli, benchmark
}


def _modules():
    mods = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                is_pkg = rel.endswith(".__init__")
                name = rel[: -len(".__init__")] if is_pkg else rel
                mods[name] = (path, is_pkg)
    return mods


EXTENSION = "metakern._C"  # compiled: imports nothing of the package


def _imports(name, path, is_pkg, known):
    """metakern modules that ``name`` imports (``from . import x`` resolved to the module x)."""
    base = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                pkg = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{pkg}.{node.module}" if node.module else pkg
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name and t.startswith("metakern"):
                out.add(t)
    return out


def _layer(name):
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


MODS = _modules()
GRAPH = {name: _imports(name, path, is_pkg, set(MODS) | {EXTENSION}) for name, (path, is_pkg) in MODS.items()}
GRAPH[EXTENSION] = set()


def test_the_graph_is_read():
    assert "metakern._contract" in GRAPH["metakern._ops"]
    assert "metakern._validate" in GRAPH["metakern.functional"]
    assert "metakern.backends.torch_backend" in GRAPH["metakern.backends"]
    assert EXTENSION in GRAPH["metakern.backends.compiled"]


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_go_down(name):
    up = [t for t in GRAPH[name] if _layer(t) > _layer(name)]
    assert not up, f"{name} (layer {_layer(name)}) imports higher layers: {up}"


def test_no_import_cycle():
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_contract_is_a_leaf():
    assert GRAPH["metakern._contract"] == set()
