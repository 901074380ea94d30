"""Speaker-independent splits, saved to a file, and the leakage audit that guards them.

A split file (JSON) names the manifest it was made for (path and SHA-256), and either one
hold-out partition (`parts`: train/val/test speaker lists) or `folds` (leave-one-speaker-out, or
k speaker folds), each fold a partition of its own.
Loading it re-audits it: a speaker on two sides, a speaker the manifest does not know, or a
manifest that changed since the split was made, is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serkit.data.manifest import Manifest, read_manifest
from serkit.errors import SplitError
from serkit.io import write_json

PARTS = ("train", "val", "test")
FORMAT = "serkit-split"
FOLDED = {"loso": "leave-one-speaker-out", "folds": "speaker"}  # split kinds made of folds


@dataclass
class Split:
    """One partition of speakers into train/val/test (val or test may be empty)."""

    train: list[str]
    val: list[str]
    test: list[str]
    manifest: Manifest
    file: Path | None = None
    fold: int | None = None

    def speakers(self, part: str) -> list[str]:
        if part not in PARTS:
            raise SplitError(f"unknown split part '{part}'; choose one of {list(PARTS)}")
        return getattr(self, part)

    def part(self, name: str) -> Manifest:
        """The manifest rows of one part."""
        return self.manifest.subset(self.speakers(name))

    def parts(self) -> dict[str, list[str]]:
        return {p: list(self.speakers(p)) for p in PARTS}


def _as_count(value: float, n: int, name: str) -> int:
    """`value` >= 1 is a number of speakers, 0 <= value < 1 a fraction of them."""
    if value < 0:
        raise SplitError(f"--{name} must be >= 0 (a count of speakers, or a fraction below 1)")
    count = int(round(value)) if value >= 1 else int(round(value * n))
    if value >= 1 and value != int(value):
        raise SplitError(f"--{name} {value}: give a whole number of speakers or a fraction below 1")
    return count


def holdout_split(manifest: Manifest, val: float = 0.25, test: float = 0.25, seed: int = 0) -> dict:
    """Choose val and test speakers at random (seeded), balancing gender where the corpus allows."""
    genders = _speaker_genders(manifest)
    speakers = sorted(genders)
    n = len(speakers)
    n_val, n_test = _as_count(val, n, "val"), _as_count(test, n, "test")
    if n_val + n_test >= n:
        raise SplitError(
            f"manifest {manifest.file} has {n} speakers; {n_val} val + {n_test} test leave none to train on"
        )
    pools = _gender_pools(genders, seed)
    parts = {}
    for part, count in (("test", n_test), ("val", n_val)):
        chosen = []
        while len(chosen) < count:
            # take from the gender pool with most speakers left, so each part stays balanced
            key = max(sorted(pools), key=lambda k: len(pools[k]))
            chosen.append(pools[key].pop())
        parts[part] = sorted(chosen)
    parts["train"] = sorted(s for pool in pools.values() for s in pool)
    return {p: parts[p] for p in PARTS}


def loso_folds(manifest: Manifest, n_val: int = 1, seed: int = 0) -> list[dict]:
    """Leave-one-speaker-out: each speaker is the test set once; `n_val` others validate."""
    speakers = sorted(_speaker_genders(manifest))
    if len(speakers) < n_val + 2:
        raise SplitError(f"manifest {manifest.file} has {len(speakers)} speakers: too few for leave-one-speaker-out")
    order = list(np.random.default_rng(seed).permutation(speakers))
    folds = []
    for i, held_out in enumerate(order):
        val = [order[(i + 1 + k) % len(order)] for k in range(n_val)]
        train = [s for s in speakers if s != held_out and s not in val]
        folds.append({"train": sorted(train), "val": sorted(val), "test": [held_out]})
    return folds


def speaker_folds(manifest: Manifest, k: int, seed: int = 0) -> list[dict]:
    """k speaker folds: every speaker is tested exactly once. Fold i tests one group of speakers and
    validates on the next fold's test group; the rest train. The groups are as equal in size and as
    gender-balanced as the corpus allows."""
    genders = _speaker_genders(manifest)
    speakers = sorted(genders)
    if k < 3:
        raise SplitError(f"--folds {k}: give at least 3 folds (each fold needs its own test and validation speakers)")
    if k > len(speakers):
        raise SplitError(f"--folds {k}: manifest {manifest.file} has only {len(speakers)} speakers; "
                         "give at most one fold per speaker (that is --loso)")
    pools = _gender_pools(genders, seed)
    # dealt out in turn from one gender after the other (largest pool first): as stratified k-fold
    order = [s for key in sorted(pools, key=lambda g: (-len(pools[g]), g)) for s in pools[key]]
    groups = [sorted(order[i::k]) for i in range(k)]
    folds = []
    for i in range(k):
        test, val = groups[i], groups[(i + 1) % k]
        train = [s for s in speakers if s not in test and s not in val]
        folds.append({"train": train, "val": val, "test": test})
    return folds


def save_split(path: Path | str, manifest: Manifest, seed: int, parts: dict | None = None,
               folds: list[dict] | None = None, kind: str | None = None) -> None:
    """Write a split file: `parts` (kind holdout) or `folds` (kind loso, or folds for k speaker folds)."""
    if kind is not None and kind not in FOLDED:
        raise ValueError(f"kind must be one of {list(FOLDED)}")
    path = Path(path)
    for i, candidate in enumerate(folds or [parts]):
        audit(candidate, manifest, where=f"fold {i}" if folds else "split")
    try:
        manifest_ref = os.path.relpath(manifest.file, path.resolve().parent)
    except ValueError:  # different drive on Windows
        manifest_ref = str(manifest.file)
    payload = {
        "format": FORMAT,
        "version": 1,
        "manifest": manifest_ref,
        "manifest_sha256": manifest.sha256,
        "seed": seed,
        "kind": (kind or "loso") if folds else "holdout",
    }
    if folds:
        payload["folds"] = folds
    else:
        payload["parts"] = parts
        payload["counts"] = {
            p: {"speakers": len(parts[p]), "utterances": int(manifest.frame["speaker"].isin(parts[p]).sum())}
            for p in PARTS
        }
    write_json(path, payload, what="split file")


def audit(parts: dict, manifest: Manifest, where: str = "split") -> None:
    """The leakage audit: refuse a speaker on two sides, or a speaker the manifest lacks."""
    seen: dict[str, str] = {}
    known = set(manifest.frame["speaker"])
    for part in PARTS:
        for speaker in parts.get(part, []):
            if speaker in seen:
                raise SplitError(
                    f"{where} leaks speaker '{speaker}': in both '{seen[speaker]}' and '{part}'; "
                    "a speaker-independent split puts each speaker on one side only (re-run serkit data split)"
                )
            if speaker not in known:
                raise SplitError(f"{where} names speaker '{speaker}' in '{part}', not in manifest {manifest.file}")
            seen[speaker] = part
    if not parts.get("train"):
        raise SplitError(f"{where} has no training speakers")


def load_split(path: Path | str, manifest: Path | str | None = None, fold: int | None = None) -> Split:
    """Read a split file, find its manifest, and audit both."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path}; make one with `serkit data split MANIFEST -o {path}`")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SplitError(f"split file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SplitError(f"{path} is not a serkit split file (no \"format\": \"{FORMAT}\"); make one with serkit data split")
    manifest_path = Path(manifest) if manifest else _recorded_manifest(path, payload)
    loaded = read_manifest(manifest_path)
    if not manifest and loaded.sha256 != payload.get("manifest_sha256"):
        raise SplitError(
            f"manifest {manifest_path} changed since split {path} was made (SHA-256 differs); "
            "re-run serkit data split on it"
        )
    if payload.get("kind") in FOLDED:
        folds = payload.get("folds")
        if not isinstance(folds, list) or not all(isinstance(f, dict) for f in folds):
            raise SplitError(f"split file {path} has no list of 'folds' (one train/val/test object each); re-run serkit data split")
        if fold is None:
            raise SplitError(f"split {path} has {len(folds)} {FOLDED[payload['kind']]} folds; choose one (data.fold / --fold)")
        if not 0 <= fold < len(folds):
            raise SplitError(f"fold {fold} out of range: split {path} has folds 0..{len(folds) - 1}")
        parts = folds[fold]
    else:
        if fold is not None:
            raise SplitError(f"split {path} is a single hold-out split; it has no folds (drop data.fold / --fold)")
        parts = payload.get("parts")
        if not isinstance(parts, dict):
            raise SplitError(f"split file {path} has no 'parts'; re-run serkit data split")
    where = f"split {path}" + (f" fold {fold}" if fold is not None else "")
    parts = {p: _speaker_list(parts.get(p, []), p, where) for p in PARTS}
    audit(parts, loaded, where=where)
    return Split(parts["train"], parts["val"], parts["test"], loaded, path, fold)


def _recorded_manifest(path: Path, payload: dict) -> Path:
    """The manifest a split file names (relative to the split's folder), checked to be there."""
    recorded = payload.get("manifest")
    if not isinstance(recorded, str) or not recorded:
        raise SplitError(f"split file {path} does not name its manifest (no \"manifest\" entry); give it with --manifest "
                         "(data.manifest in a recipe), or re-make the split with serkit data split")
    manifest = path.resolve().parent / recorded
    if not manifest.is_file():
        raise SplitError(f"the manifest recorded by split {path} is not at {manifest} (moved or deleted?); give its new "
                         "place with --manifest (data.manifest in a recipe)")
    return manifest


def _speaker_list(value, part: str, where: str) -> list[str]:
    # a string is iterable too: "04" would be read as speakers "0" and "4"
    if not isinstance(value, list):
        raise SplitError(f"{where}: part '{part}' must be a list of speaker ids, e.g. [\"04\"], not {json.dumps(value)}; "
                         "fix the file or re-make it with serkit data split")
    return [str(s) for s in value]


def fold_count(path: Path | str) -> int | None:
    """How many folds a split file holds: None for a hold-out split, or a file that is not a folded
    split file (load_split says what is wrong with it)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("kind") not in FOLDED or not isinstance(payload.get("folds"), list):
        return None
    return len(payload["folds"])


def _gender_pools(genders: dict[str, str], seed: int) -> dict[str, list[str]]:
    """The speakers of each gender, each list in a seeded random order."""
    rng = np.random.default_rng(seed)
    pools: dict[str, list[str]] = {}
    for speaker in sorted(genders):
        pools.setdefault(genders[speaker], []).append(speaker)
    for key in sorted(pools):
        rng.shuffle(pools[key])
    return pools


def _speaker_genders(manifest: Manifest) -> dict[str, str]:
    frame = manifest.frame
    if "gender" not in frame.columns:
        return {s: "unknown" for s in frame["speaker"].unique()}
    genders = {}
    for speaker, group in frame.groupby("speaker"):
        values = set(group["gender"].str.lower().str.strip()) - {""}
        genders[speaker] = values.pop() if len(values) == 1 else "unknown"
    return genders


def split_parts_sha256(parts: dict[str, list[str]]) -> str:
    """One hash of a whole partition (never of one speaker), to check a split given back later."""
    canonical = {p: sorted(str(s) for s in v) for p, v in sorted(parts.items()) if v}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def calibration_rows(frame, speakers, per_speaker: int):
    """Which rows hold out `per_speaker` utterances of each of `speakers` (a boolean mask over `frame`).

    The choice depends on each utterance's speaker and file name alone, not on the other rows, the
    manifest's location or its order: a model retrained without a forget set holds out the same
    utterances as the original."""
    mask = np.zeros(len(frame), dtype=bool)
    if per_speaker <= 0:
        return mask
    names = [f"{s}/{Path(p).name}" for s, p in zip(frame["speaker"], frame["path"])]
    order = {n: hashlib.sha256(n.encode()).hexdigest() for n in names}
    wanted = set(speakers)
    for speaker in wanted:
        rows = [i for i, s in enumerate(frame["speaker"]) if s == speaker]
        if len(rows) <= per_speaker:
            raise SplitError(f"data.calibration {per_speaker}: speaker '{speaker}' has only {len(rows)} utterances, "
                             "which would leave none to train on; lower data.calibration")
        for i in sorted(rows, key=lambda i: order[names[i]])[:per_speaker]:
            mask[i] = True
    return mask
