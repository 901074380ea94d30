"""`import serkit` makes `transformers`' Auto classes know serkit's models, without importing transformers.

Importing transformers costs seconds that most serkit commands never need, so `import serkit` only
installs this finder; when transformers is imported (before or after serkit), serkit.hf.auto registers its
classes. A failure to register is a warning, never a broken `import transformers`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings


def _register() -> None:
    if "serkit.hf.auto" in sys.modules:  # it is being imported (and imports transformers): it registers itself
        return
    try:
        # by name: `import serkit` runs this hook, and the package's init must not depend on its models
        importlib.import_module("serkit.hf.auto")  # registers on import
    except Exception as exc:  # noqa: BLE001 - the user's import of transformers must not fail because of serkit
        warnings.warn(f"serkit could not register its models with transformers' Auto classes: {exc}", stacklevel=2)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)  # once, and so that the real finder answers below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
