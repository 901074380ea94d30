"""The documentation site builds with --strict (a broken link, a missing page or a stale API name fails it),
and its generated pages cover what exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from tests.helpers import REPO


def test_the_documentation_site_builds_strictly_with_every_command_and_the_python_api(tmp_path):
    assert yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))["strict"] is True
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    import typer

    from serkit.cli import app

    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for sub in (getattr(command, "commands", None) or {None: None}):
            line = f"Usage: serkit {name}" + (f" {sub}" if sub else "")
            assert line in cli, line
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert all(f"serkit.api.{name}" in api for name in ("train", "predict", "evaluate", "forget", "Prediction", "Evaluation"))
    assert "Forget-only methods against retraining" in (tmp_path / "site" / "results" / "index.html").read_text()


def _slug(heading: str) -> str:
    """The anchor GitHub and mkdocs' toc both give a heading (lower case, punctuation dropped, spaces -> -)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_readme_front_page_links_only_pages_and_headings_that_exist():
    readme = (REPO / "README.md").read_text()
    links = [link for link in re.findall(r"\]\(([^)]+)\)", readme) if not link.startswith(("http:", "https:"))]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.is_file(), f"README links {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links {link}: no such heading"
    for page in re.findall(r":\s+([\w/.-]+\.md)$", (REPO / "mkdocs.yml").read_text(), re.M):
        assert (REPO / "docs" / page).is_file() or page.startswith(("reference/cli", "results/")), page


def test_every_serkit_command_line_in_the_readme_and_the_docs_names_a_command_and_options_that_exist():
    import typer

    from serkit.cli import app

    group = typer.main.get_command(app)
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    checked = 0
    for page in pages:
        text = re.sub(r"\\\n\s*", " ", page.read_text())  # shell continuation lines joined
        blocks = "\n".join(re.findall(r"^```(?:bash|sh)?\n(.*?)^```", text, re.M | re.S))
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        lines = re.findall(r"^\s*(serkit [^#\n]*)", blocks, re.M) + re.findall(r"`(serkit [^`]*)`", prose)
        for line in lines:
            words = line.split()
            command, path = group, ["serkit"]
            for word in words[1:]:
                subcommands = getattr(command, "commands", None)
                if not subcommands or word not in subcommands:
                    break
                command, path = subcommands[word], [*path, word]
            if getattr(command, "commands", None):
                if len(words) > len(path) and not words[len(path)].isupper():  # `serkit models` alone is fine; `serkit COMMAND` too
                    raise AssertionError(f"{page.name}: {line!r} names no command")
                continue
            options = {o for p in command.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
            unknown = [w.split("=")[0] for w in words if w.startswith("-") and w.split("=")[0] not in options]
            assert not unknown, f"{page.name}: {line!r} uses {unknown}, not options of {' '.join(path)}"
            checked += 1
    assert checked > 50
