"""Which utterances an evaluation scores, and whether the model heard their speakers in training."""

from __future__ import annotations

from pathlib import Path

from serkit.errors import SerkitError


def rows_to_evaluate(split: Path | str | None, manifest: Path | str | None, part: str, fold: int | None):
    """The rows to score, where they come from (for the report), the results' name, and the split's parts
    (None without a split)."""
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import load_split

    if split is not None:
        loaded = load_split(split, manifest, fold)
        rows, source, name = loaded.part(part), f"{part} part of {split}", part
        if len(rows) == 0:
            raise SerkitError(f"the {part} part of {split} has no utterances")
        return rows, source, name, loaded.parts()
    if manifest is not None:
        return read_manifest(manifest), str(manifest), "all", None
    raise SerkitError("give --split SPLIT.json (with --part) or --manifest MANIFEST.csv")


def check_unseen(saved, rows, source: str, allow_seen: bool, split_parts: dict | None = None, note=None) -> list[str] | None:
    """Refuse to score speakers the model trained on as if unseen (unless `allow_seen`); `note(kind, text)`
    says when it cannot be checked or when seen speakers are scored anyway. Returns the seen speakers."""
    from serkit.evaluation.classification import seen_speakers

    note = note or (lambda kind, text: None)
    seen = seen_speakers(saved, rows.speakers, split_parts)
    if seen is None:
        note("note", f"model {saved.path} does not list the speakers it was trained on; serkit cannot check "
             "that the evaluated speakers are unseen")
    elif seen and not allow_seen:
        raise SerkitError(f"model {saved.path} was trained on speaker(s) {', '.join(seen)}, and the {source} includes them: "
                          "its figures on them are not speaker-independent; evaluate speakers it never heard (e.g. the test "
                          "part of its own split), or pass --allow-seen-speakers to evaluate them anyway")
    elif seen:
        note("warning", f"model {saved.path} was trained on speaker(s) {', '.join(seen)}: these figures include "
             "them and are NOT speaker-independent (marked in metrics.json and report.md)")
    return seen
