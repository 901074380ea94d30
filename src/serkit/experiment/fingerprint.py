"""A grid's grid.json: the settings its results depend on, so that a resume cannot mix two experiments."""

from __future__ import annotations

import json
from pathlib import Path

from serkit.errors import ConfigError
from serkit.io import write_text


class Fingerprint:
    """grid.json beside a grid's results. Each grid decides what must stay the same (its recipe, its
    upstream model, its split...) and what may grow (more layers, more encoders); this class reads and
    writes the file (atomically) and words the refusal. `legacy`: older file names of the same record."""

    FILE = "grid.json"

    def __init__(self, out: Path | str, what: str = "a grid run", legacy: tuple[str, ...] = ()):
        self.out, self.what = Path(out), what
        self.file = self.out / self.FILE
        self._legacy = [self.out / name for name in legacy]

    def previous(self) -> dict | None:
        for file in (self.file, *self._legacy):
            if file.is_file():
                try:
                    return json.loads(file.read_text())
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{file} cannot be read ({exc}); it records the settings of the results beside "
                                      "it: restore it, or use another output_dir") from None
        return None

    def refuse(self, differs: list[str]) -> None:
        if differs:
            raise ConfigError(f"{self.out} holds {self.what} with other settings ({', '.join(differs)}); resuming would "
                              "mix results: choose another output_dir")

    def save(self, settings: dict) -> None:
        write_text(self.file, json.dumps(settings, indent=1) + "\n", overwrite=True)
        for file in self._legacy:
            file.unlink(missing_ok=True)
