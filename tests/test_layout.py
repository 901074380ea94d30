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
    assert top == ["__init__", "__main__", "api", "cli", "config", "determinism", "errors", "io", "metrics", "plots"], top
    for folder in ("unlearning", "analysis", "transfer", "dimensional", "training", "evaluation", "experiment",
                   "inference", "data", "models", "commands"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


def _commands(typer_app, path: str = "serkit"):
    """(command line, callback) of every command of a typer app, its sub-apps' included."""
    for info in typer_app.registered_commands:
        yield f"{path} {info.name or info.callback.__name__}", info.callback
    for group in typer_app.registered_groups:
        yield from _commands(group.typer_instance, f"{path} {group.name}")


def test_every_command_lives_in_a_commands_module_at_module_level():
    import importlib

    from serkit.cli import app

    commands = dict(_commands(app))
    assert "serkit data import" in commands and "serkit experiment transfer" in commands  # the walk sees sub-apps
    for line, callback in commands.items():
        assert callback.__module__.startswith("serkit.commands."), (line, callback.__module__)
        # module-level, not a closure made inside register(): one style, and each command importable by name
        assert getattr(importlib.import_module(callback.__module__), callback.__qualname__, None) is callback, line


def test_cli_py_holds_the_one_app_and_defines_no_commands():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert [ast.unparse(f) for f in calls if f.attr == "Typer"] == ["typer.Typer"]
    assert not [ast.unparse(f) for f in calls if f.attr in ("command", "add_typer", "callback")]
    decorated = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.decorator_list]
    assert decorated == []


def test_each_command_module_registers_and_shared_parts_are_skipped():
    from serkit.commands import ORDER, command_modules

    names = command_modules()
    assert names[:len(ORDER)] == list(ORDER) and "_shared" not in names
    for name in names:
        assert "def register(app: typer.Typer) -> None:" in (PACKAGE / "commands" / f"{name}.py").read_text(), name


TESTS = Path(__file__).parent


def test_tests_mirror_the_package_folders_and_import_shared_helpers_from_one_module():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    package = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders <= package, f"test folders without a package folder: {sorted(folders - package)}"
    borrowed = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                if node.module.rsplit(".", 1)[-1].startswith("test_") or node.module == "tests.conftest":
                    borrowed.append(f"{path.relative_to(TESTS)} imports {node.module}")
    assert borrowed == [], "tests share helpers through tests/helpers.py (fixtures through conftest.py): " + "; ".join(borrowed)
