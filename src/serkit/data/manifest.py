"""The manifest: one CSV row per utterance, the single source of truth for a corpus.

Columns: `path` (relative to the manifest's folder, or absolute), `speaker`, `emotion`, and
usually `gender` and `duration_s`; corpus-specific columns follow. Identifiers stay strings
("01" is not 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from serkit.errors import ManifestError
from serkit.io import atomic_file, sha256_file

REQUIRED_COLUMNS = ("path", "speaker", "emotion")
STANDARD_COLUMNS = ("path", "speaker", "gender", "emotion", "duration_s")


@dataclass
class Manifest:
    frame: pd.DataFrame
    file: Path
    sha256: str = field(default="")

    @property
    def root(self) -> Path:
        return self.file.parent

    def __len__(self) -> int:
        return len(self.frame)

    def audio_paths(self) -> list[Path]:
        return [resolve_audio_path(self.root, p) for p in self.frame["path"]]

    @property
    def speakers(self) -> list[str]:
        return sorted(self.frame["speaker"].unique())

    @property
    def emotions(self) -> list[str]:
        return sorted(self.frame["emotion"].unique())

    def subset(self, speakers) -> "Manifest":
        keep = self.frame["speaker"].isin(set(speakers))
        return Manifest(self.frame[keep].reset_index(drop=True), self.file, self.sha256)

    def check_labels(self, labels: list[str], what: str) -> None:
        """Refuse rows whose emotion is not in `labels` (e.g. a model's label list)."""
        unknown = self.frame[~self.frame["emotion"].isin(labels)]
        if len(unknown):
            counts = unknown["emotion"].value_counts()
            first = unknown["path"].iloc[0]
            listing = ", ".join(f"'{k}' ({v} rows)" for k, v in counts.items())
            raise ManifestError(
                f"manifest {self.file} has emotion {listing}, e.g. {first}, not in {what}'s labels "
                f"{labels}; drop or relabel those rows"
            )


def resolve_audio_path(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def read_manifest(path: Path | str, required=REQUIRED_COLUMNS) -> Manifest:
    """Read and validate a manifest CSV."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ManifestError(
            f"manifest not found: {path}; create one with `serkit data import` (see serkit data import --help)"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ManifestError(f"cannot parse manifest {path} as CSV ({exc}); is it a comma-separated file?") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks column(s) {missing} (has {list(frame.columns)}); "
            f"a manifest needs {list(required)}"
        )
    if frame.empty:
        raise ManifestError(f"manifest {path} has no rows")
    for column in required:
        blank = frame[column].str.strip() == ""
        if blank.any():
            row = int(blank.idxmax()) + 2  # header is line 1
            raise ManifestError(f"manifest {path} line {row}: empty '{column}'; fill it in or drop the row")
    duplicated = frame["path"][frame["path"].duplicated()]
    if len(duplicated):
        raise ManifestError(
            f"manifest {path} lists {duplicated.iloc[0]} more than once ({len(duplicated)} duplicate paths); "
            "each utterance must appear once"
        )
    if "duration_s" in frame.columns:
        frame["duration_s"] = pd.to_numeric(frame["duration_s"], errors="coerce")
    return Manifest(frame, path.resolve(), sha256_file(path))


def write_manifest(frame: pd.DataFrame, path: Path | str) -> None:
    columns = [c for c in STANDARD_COLUMNS if c in frame.columns]
    columns += [c for c in frame.columns if c not in columns]
    with atomic_file(path, "w") as handle:
        frame[columns].to_csv(handle, index=False, float_format="%.4f")
