"""The transcripts an audio + text model reads (paper 004): from a manifest column, checked."""

from __future__ import annotations

import pandas as pd

from serkit.data.dataset import collate
from serkit.data.manifest import Manifest
from serkit.errors import ManifestError


def reads_text(model) -> bool:
    return bool(getattr(model, "uses_text", False))


def manifest_texts(manifest: Manifest, column: str, empty: str) -> list[str]:
    """Transcripts of a manifest, checked: the column exists, and no transcript is empty unless allowed."""
    frame = manifest.frame
    if column not in frame.columns:
        raise ManifestError(f"{manifest.file} has no '{column}' column of transcripts, which this model reads; add "
                            "them (ASR transcription is not in serkit yet), or use model.options.mode: audio")
    texts = ["" if pd.isna(t) else str(t).strip() for t in frame[column]]
    empty_rows = [i for i, t in enumerate(texts) if not t]
    if empty_rows and empty == "error":
        raise ManifestError(f"{manifest.file}: the transcript of {frame['path'].iloc[empty_rows[0]]} is empty "
                            f"({len(empty_rows)} such rows); fill them, or set model.options.empty_text: allow")
    return texts


def collate_with_text(batch, encode, texts: list[str]):
    """collate() plus the token ids and attention mask of each item's transcript."""
    wave, mask, targets, indices = collate(batch)
    ids, attention = encode([texts[int(i)] for i in indices])
    return wave, mask, targets, indices, ids, attention
