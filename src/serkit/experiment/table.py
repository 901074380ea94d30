"""A grid's results: one row per finished cell, never half a row.

`ResultsTable` is results.csv (flat rows, every value read back as text); `StepResults` is results.json
for a study whose steps return nested results (probe tables, distance summaries), keyed by step."""

from __future__ import annotations

import csv
import io
import json
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

    def finished(self, key: Callable[[dict], str]) -> set[str]:
        """The keys of the finished cells (`key` reads a row of text values)."""
        return {key(r) for r in self.read().to_dict("records")}

    def append(self, rows: list[dict]) -> None:
        text = self.path.read_text() if self.exists() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns)
        if not text:
            writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text + buffer.getvalue(), overwrite=True)


class StepResults:
    """results.json: step key -> its result (a JSON object), rewritten atomically after each step.

    Rows are `{"step": key, "result": {...}}`, as the executor hands them over."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def exists(self) -> bool:
        return self.path.is_file()

    def finished(self, key: Callable[[dict], str] | None = None) -> set[str]:
        return set(self.done)

    def append(self, rows: list[dict]) -> None:
        for row in rows:
            self.done[row["step"]] = row["result"]
        write_text(self.path, json.dumps(self.done, indent=1) + "\n", overwrite=True)
