"""The layout's two rules, read from the sources: no import cycle between the project's modules, and
the product path (shotstream, benchmark, demo) imports nothing from experiments/ (the training CLI's
stage registry names its stages as strings, imported only when one is run: the one exception)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shotstream", "benchmark", "demo", "experiments")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, at module level or inside functions."""
    modules = _modules()

    def owner(name: str) -> str | None:  # `a.b.c` -> the longest prefix that is a module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package upwards
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                deps.update(owner(f"{base}.{a.name}") for a in node.names)
        graph[name] = deps - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_graph_holds_function_level_imports_and_the_finder_their_cycles():
    assert "shotstream.session" in import_graph()["benchmark.runner"]  # imported inside a function only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycle_between_the_projects_modules():
    assert cycles(import_graph()) == []


def test_the_product_path_imports_nothing_from_experiments():
    graph = import_graph()
    assert len(graph) > 50 and any(d.startswith("experiments") for d in graph["experiments.identity_teacher"])
    offenders = {m: sorted(d for d in deps if d.startswith("experiments"))
                 for m, deps in graph.items() if not m.startswith("experiments")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_only_the_stage_registry_names_experiments_by_string():
    named = {}
    for name, path in _modules().items():
        if not name.startswith("experiments"):
            strings = [n.value for n in ast.walk(ast.parse(path.read_text()))
                       if isinstance(n, ast.Constant) and isinstance(n.value, str)]
            named.update({name: s for s in strings if s.startswith("experiments.")})
    assert set(named) == {"shotstream.training.cli"}
