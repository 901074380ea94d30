"""The documentation site builds with --strict (a broken link, a missing page or a stale API name fails it),
and its generated pages cover what exists."""

from __future__ import annotations

import os
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
