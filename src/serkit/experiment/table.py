"""A grid's results.csv: one row per finished cell, never half a row, every value read back as text."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from serkit.errors import ConfigError
from serkit.io import write_text


class ResultsTable:
    """results.csv with fixed `columns`.

    `append` rewrites the whole file through a temporary one, so an interruption loses at most the
    cell that was running, never a row half-written (a plain append can leave one). A file written
    by an older serkit, with fewer columns, is upgraded once by `upgrade` (the grid's own fill-ins,
    e.g. a label column copied from the method column), then every missing column is empty; a
    column the grid does not know is refused, since it is some other table."""

    def __init__(self, path: Path | str, columns: list[str], what: str = "grid",
                 upgrade: Callable[[pd.DataFrame], pd.DataFrame] | None = None):
        self.path, self.columns, self.what, self._upgrade = Path(path), list(columns), what, upgrade

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> pd.DataFrame:
        """Every row, every value as text ("" where empty); an older file is upgraded first."""
        if not self.exists():
            return pd.DataFrame(columns=self.columns, dtype=str)
        frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        if list(frame.columns) != self.columns:
            frame = self._upgraded(frame)
        return frame

    def _upgraded(self, frame: pd.DataFrame) -> pd.DataFrame:
        unknown = sorted(set(frame.columns) - set(self.columns))
        if unknown:
            raise ConfigError(f"{self.path}: columns {unknown} are not a serkit {self.what}'s; use another output_dir")
        if self._upgrade is not None:
            frame = self._upgrade(frame)
        frame = frame.reindex(columns=self.columns, fill_value="")
        write_text(self.path, frame.to_csv(index=False), overwrite=True)
        return frame

    def append(self, rows: list[dict]) -> None:
        text = self.path.read_text() if self.exists() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        if not text:
            writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text + buffer.getvalue(), overwrite=True)
