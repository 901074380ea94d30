"""The package's shape: modules that do not import each other back, one folder per paper's system."""

from __future__ import annotations

import ast
from pathlib import Path

import serkit

PACKAGE = Path(serkit.__file__).parent
# a registry imports its plug-ins to fill itself (inside a function, on first use); they import it
REGISTRIES = {"serkit.models.registry", "serkit.unlearning.methods.base"}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Which serkit modules each one imports, anywhere in its file (inside functions too: a lazy
    import is still a dependency)."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serkit"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = subs or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("serkit")]
            else:
                continue
            for target in targets:
                plugin = name in REGISTRIES and target.rsplit(".", 1)[0] == name.rsplit(".", 1)[0]
                if target in modules and target != name and not plugin:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "serkit.training.engine" in graph and graph["serkit.training.engine"]  # the parser sees imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_each_paper_system_is_one_folder_and_the_top_level_holds_shared_parts_only():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "cli", "config", "determinism", "errors", "io", "metrics", "plots"], top
    for folder in ("unlearning", "analysis", "transfer", "dimensional", "training", "evaluation", "experiment",
                   "inference", "data", "models", "commands"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
