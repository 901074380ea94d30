"""The CLI's commands, one module per command group.

Every module here defines its commands as module-level functions and `register(app)`, which adds
them (or its sub-app) to the main typer app. Modules are found automatically, so adding an area
never means editing cli.py; a module whose name starts with `_` holds shared parts, not commands.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

# `serkit --help` lists the plain commands, then the sub-apps, each in the order they were added:
# this order keeps the help as users know it (a module not listed here comes after, by name).
ORDER = ("data", "train", "evaluate", "predict", "models", "experiment", "analysis", "features", "forget", "audit", "receipt",
         "transfer", "export", "dimensional")


def command_modules() -> list[str]:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [*ORDER, *(name for name in found if name not in ORDER)]


def register_all(app: typer.Typer) -> None:
    for name in command_modules():
        importlib.import_module(f"{__name__}.{name}").register(app)
