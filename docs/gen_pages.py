"""Pages made at build time (mkdocs-gen-files), so they cannot go stale: the CLI reference from the typer
app itself, and the measured results from bench/RESULTS.md with the files it links."""

from __future__ import annotations

import re
from pathlib import Path

import mkdocs_gen_files
import typer

from serkit.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _commands(command, path: str):
    if getattr(command, "commands", None):  # a group (typer vendors its own click: no isinstance)
        for name in sorted(command.commands):
            yield from _commands(command.commands[name], f"{path} {name}")
    else:
        yield path, command


def cli_reference() -> str:
    """Each command's `--help`, as the terminal shows it (typer's public test runner, 100 columns, no colour)."""
    from typer.testing import CliRunner

    runner = CliRunner(env={"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "100"})
    lines = ["# Command line", "", "Generated from the `serkit` application at build time: every command's `--help`.", ""]
    for path, _ in _commands(typer.main.get_command(app), "serkit"):
        shown = runner.invoke(app, [*path.split()[1:], "--help"], prog_name="serkit", terminal_width=100)
        if shown.exit_code:
            raise RuntimeError(f"{path} --help failed: {shown.output[-500:]}")
        lines += [f"## {path}", "", "```text", shown.output.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


LINK = re.compile(r"\]\(((?!https?:)[^)#]+)\)")


def results_page() -> None:
    """bench/RESULTS.md as results/index.md, and every local file it links (and they link), beside it."""
    bench = ROOT / "bench"
    todo, done = [(bench / "RESULTS.md", "results/index.md")], set()
    while todo:
        source, target = todo.pop()
        if target in done:
            continue
        done.add(target)
        data = source.read_bytes()
        with mkdocs_gen_files.open(target, "wb") as handle:
            handle.write(data)
        if source.suffix == ".md":
            for link in LINK.findall(data.decode()):
                linked = (source.parent / link).resolve()
                todo.append((linked, "results/" + linked.relative_to(bench).as_posix()))


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_reference())
results_page()
