"""CLI commands that live beside their area of the library.

Every module in this package defines `register(app, console)`, which adds its commands (or a
sub-app) to the main typer app. They are found automatically, so adding an area never means
editing cli.py.
"""

from __future__ import annotations

import importlib
import pkgutil


def register_all(app, console) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app, console)
