"""What a forgotten model's directory may say about its past, and a check that it says no more.

A model that has answered a deletion request is shared: it may say that N utterances were
forgotten, by which method, when, and from which model (its weights' hash). It must not say which:
no speaker id, file path, name or stem, not even hashed, since speaker ids and corpus file names
are guessable and sha256("05") names actor 05. A trained model's provenance lists its training
speakers and the paths of its manifest and split; after a deletion those lists would narrow down
who was forgotten (the forgotten speaker is one of them, and a retrained model's list lacks them),
so they are replaced by counts and by a hash of the whole split, against which the split can be
given back and checked. Absolute paths (machine paths) are cut to their last component.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from serkit.data.splits import split_parts_sha256

REMOVED = ("split_file", "manifest", "speakers", "unlearning", "unlearning_history")


def private_training_provenance(provenance: dict) -> dict:
    """A trained model's provenance without its speakers, data paths or earlier deletions."""
    if provenance.get("private"):
        return {k: v for k, v in provenance.items() if k not in ("unlearning", "unlearning_history")}
    kept = {k: v for k, v in provenance.items() if k not in REMOVED}
    speakers = provenance.get("speakers") or {}
    kept["speakers_count"] = {p: len(v) for p, v in speakers.items()}
    if speakers:
        kept["split_parts_sha256"] = split_parts_sha256(speakers)
    if isinstance(kept.get("init_from"), dict):
        kept["init_from"] = {"weights_sha256": kept["init_from"].get("weights_sha256")}
    kept = strip_machine_paths(kept)
    kept["private"] = True
    return kept


def strip_machine_paths(value):
    """Absolute paths anywhere in a JSON-like value become their last component."""
    if isinstance(value, dict):
        return {k: strip_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_machine_paths(v) for v in value]
    if isinstance(value, str) and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
                                   or value.startswith("~")):
        return PureWindowsPath(value).name if "\\" in value else PurePosixPath(value).name
    return value


def identifiers_of(speakers: list[str], paths: list[str]) -> list[str]:
    """What names an utterance or a speaker: each id, and each path with its file name and stem."""
    found = set(speakers)
    for p in paths:
        found.update({p, Path(p).name, Path(p).stem, os.path.abspath(p)})
    return sorted(x for x in found if x)


def find_traces(folder: Path | str, identifiers: list[str], raw: bool = True) -> list[str]:
    """Where an identifier, or the MD5, SHA-1 or SHA-256 of it, appears in the folder's files.

    Returns "file: what" lines. An identifier itself is matched as a whole token (see _token_pattern);
    `raw=False` looks for the hashes only."""
    needles: list[tuple[str, re.Pattern]] = []
    for ident in identifiers:
        for algorithm in ("md5", "sha1", "sha256"):
            digest = hashlib.new(algorithm, ident.encode()).hexdigest()
            needles.append((f"{algorithm}({ident!r})", re.compile(re.escape(digest), re.IGNORECASE)))
        if raw:
            needles.append((repr(ident), _token_pattern(ident)))
    hits = []
    for file in sorted(Path(folder).rglob("*")):
        if not file.is_file():
            continue
        text = _readable_text(file)
        for what, pattern in needles:
            if pattern.search(text):
                hits.append(f"{file.relative_to(folder)}: {what}")
    return hits


def _token_pattern(ident: str) -> re.Pattern:
    """An identifier as a whole token: not inside a number, a hex digest or a time of day ("0.05", "a05f",
    "15:05:09"). A purely numeric id ("10", RAVDESS' actor 10) also counts as a quoted string or after a
    word that names a speaker ("actor 10", "Actor_10", "speaker: 10"), not as the number 10 in "10 epochs"."""
    escaped = re.escape(ident)
    if ident.isdigit():
        return re.compile(rf"[\"']{escaped}[\"']|(?i:speaker|actor|spk|subject)\S{{0,4}}\s?{escaped}(?![0-9])")
    return re.compile(r"(?<![A-Za-z0-9._:+-])" + escaped + r"(?![A-Za-z0-9_:-])")


def _readable_text(file: Path) -> str:
    """A file's text; for safetensors only the JSON header (the rest is weights, not words)."""
    data = file.read_bytes()
    if file.suffix == ".safetensors" and len(data) >= 8:
        size = int.from_bytes(data[:8], "little")
        data = data[8:8 + size]
    return data.decode("utf-8", errors="replace")
