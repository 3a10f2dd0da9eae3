"""No import cycles between the modules of lrdpo_fast/ (kernels/ included, installed as
lrdpo_fast.kernels) and bench/.

Every import statement counts, the ones inside functions too (a lazy import only hides a cycle
until the day someone hoists it), except those under ``if TYPE_CHECKING:``. An edge goes to the
module an import names: ``from pkg import sub`` to ``pkg.sub`` when ``sub`` is a module, to
``pkg`` (its ``__init__``) for any other name. Importing ``a.b.c`` also runs ``a/__init__``, but
that is not an edge here: a package that re-exports its sub-modules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"lrdpo_fast": REPO / "lrdpo_fast", "lrdpo_fast.kernels": REPO / "kernels", "bench": REPO / "bench"}


def module_files() -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is_package)} for every .py under the roots."""
    mods: dict[str, tuple[Path, bool]] = {}
    for prefix, root in ROOTS.items():
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join([prefix, *parts]) if parts else prefix
            if name in mods and mods[name][0] != path:  # lrdpo_fast/kernels would shadow kernels/
                raise AssertionError(f"two files for module {name}: {mods[name][0]} and {path}")
            mods[name] = (path, is_pkg)
    return mods


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import / ImportFrom nodes anywhere in the tree, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, mods: dict) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in mods:
            return cand
    return None


def import_graph() -> dict[str, set[str]]:
    mods = module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    targets.append(sub if sub in mods else origin)
            for t in targets:
                k = _known(t, mods)
                if k is not None and k != mod:
                    graph[mod].add(k)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete cycle inside a component, for the failure message."""
    members = set(comp)
    start = comp[0]
    seen = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return " -> ".join(seen[v] + [start])
                if w not in seen:
                    seen[w] = seen[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return ", ".join(comp)


def test_graph_sees_the_modules_and_their_imports():
    graph = import_graph()
    assert {"lrdpo_fast", "lrdpo_fast.ops", "bench.worker", "bench.cells", "bench.harness"} <= set(graph)
    assert "bench.harness" in graph["bench.cells"]  # a relative import, resolved
    assert "bench.train_step" in graph["bench.worker"]  # an import inside a function counts


def test_cycle_detection_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    found = cycles(graph)
    assert found == [["a", "b", "c"]]
    assert _path(graph, found[0]) == "a -> b -> c -> a"


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_path(graph, c) for c in found)
