"""The forget set D_e: the utterances a deletion request names, checked against what the model learned.

Three ways to name it: a list of files, a whole training speaker, or N utterances drawn at random
(seeded) from one training speaker (the papers' protocol). The model directory's provenance says
which manifest and which speakers it was trained on; utterances of speakers it never trained on
(validation or test) are refused: what was never learned cannot be forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.data.manifest import Manifest, read_manifest
from serkit.data.splits import calibration_rows
from serkit.errors import SerkitError
from serkit.models.modeldir import SavedModel
from serkit.unlearning.commitments import utterance_digest


@dataclass
class TrainingData:
    """What a saved model was trained on, from its provenance."""

    manifest: Manifest
    trained_speakers: list[str]
    held_out: dict[str, list[str]]  # part -> speakers the model never trained on
    parts: dict[str, list[str]] = field(default_factory=dict)  # every part of the split, trained on or not
    calibration: int = 0  # utterances of each training speaker held out of training (data.calibration)

    def calibration_mask(self) -> np.ndarray:
        """Rows of the manifest held out of training although their speaker was trained on."""
        return calibration_rows(self.manifest.frame, self.trained_speakers, self.calibration)

    def train_rows(self) -> pd.DataFrame:
        frame = self.manifest.frame
        return frame[frame["speaker"].isin(self.trained_speakers) & ~self.calibration_mask()]

    def forget_share(self, forget_set: ForgetSet) -> float:
        """The share of a speaker's training utterances a request forgets: min(1, N / the mean per training speaker).
        The corpus-wide mean, not the forget speaker's own count, so a goal read from it says nothing the receipt's
        N does not (a forget set of several speakers gets the share of one)."""
        per_speaker = len(self.train_rows()) / max(len(self.trained_speakers), 1)
        return min(1.0, len(forget_set) / per_speaker) if per_speaker else 1.0


def training_data(saved: SavedModel, manifest: Path | str | None = None, split: Path | str | None = None) -> TrainingData:
    """What `saved` was trained on: from its provenance, or from the split it was trained with.

    A model that has answered a deletion request keeps its training speakers and data location
    private (they would narrow down who was forgotten); it records hashes of them instead, so the
    split it was trained with can be given back (`split`) and checked."""
    prov = saved.config.get("provenance") or {}
    trained_on = prov.get("trained_on") or ["train"]
    if prov.get("imported") and not prov.get("speakers"):
        raise SerkitError(f"model {saved.path} was imported from {prov['imported'].get('format', 'another format')} without "
                          "the data it was trained on: import it again with `serkit models import-hf HF_DIR -o DIR --split "
                          "SPLIT.json` (the split it was trained on, made with serkit data split)")
    if split is not None:
        return _from_split(saved, prov, trained_on, split, manifest)
    if prov.get("private"):
        requests = len(prov.get("unlearning_history") or [])
        raise SerkitError(f"model {saved.path} keeps its training speakers private (it has answered {requests} deletion "
                          "request(s)); give the split it was trained with: --split SPLIT.json")
    path = manifest or prov.get("manifest")
    if not path:
        raise SerkitError(f"model {saved.path} does not record the manifest it was trained on; give the split it was "
                          "trained with (--split SPLIT.json) or its manifest (--manifest MANIFEST.csv)")
    if manifest is None and not Path(path).is_file():
        raise SerkitError(f"the manifest model {saved.path} was trained on is no longer at {path}; point serkit at it "
                          "with --manifest MANIFEST.csv, or give the split with --split SPLIT.json")
    loaded = read_manifest(path)
    speakers = prov.get("speakers") or {}
    trained = sorted({s for part in trained_on for s in speakers.get(part, [])})
    if not trained:
        raise SerkitError(f"model {saved.path} does not record its training speakers (provenance.speakers); "
                          "it was not trained by serkit train, so its forget set cannot be checked")
    held_out = {p: list(v) for p, v in speakers.items() if p not in trained_on}
    return TrainingData(loaded, trained, held_out, {p: list(v) for p, v in speakers.items()}, _calibration(prov))


def _from_split(saved: SavedModel, prov: dict, trained_on: list[str], split: Path | str, manifest) -> TrainingData:
    from serkit.data.splits import load_split, split_parts_sha256

    fold = ((prov.get("recipe") or {}).get("data") or {}).get("fold")
    loaded = load_split(split, manifest, fold)
    parts = loaded.parts()
    recorded = prov.get("speakers")
    if recorded is not None:
        matches = {p: sorted(v) for p, v in recorded.items() if v} == {p: sorted(v) for p, v in parts.items() if v}
    elif prov.get("split_parts_sha256"):
        matches = split_parts_sha256(parts) == prov["split_parts_sha256"]
    else:
        raise SerkitError(f"model {saved.path} does not record the speakers it was trained on, so split {split} cannot "
                          "be checked against it; it was not trained by serkit train")
    if not matches:
        raise SerkitError(f"split {split} is not the one model {saved.path} was trained with (its speakers differ); "
                          "give the split file `serkit train` used")
    trained = sorted({s for part in trained_on for s in parts.get(part, [])})
    held_out = {p: list(v) for p, v in parts.items() if p not in trained_on}
    return TrainingData(loaded.manifest, trained, held_out, parts, _calibration(prov))


def _calibration(prov: dict) -> int:
    return int((((prov.get("recipe") or {}).get("data") or {}).get("calibration")) or 0)


@dataclass
class ForgetSet:
    rows: pd.DataFrame  # manifest rows of the utterances to forget
    manifest: Manifest
    mode: str  # "files", "speaker" or "random"
    seed: int | None = None
    skipped: list[str] = field(default_factory=list)  # listed files the model was never trained on

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def speakers(self) -> list[str]:
        return sorted(self.rows["speaker"].unique())

    def audio_paths(self) -> list[Path]:
        return Manifest(self.rows, self.manifest.file).audio_paths()

    def as_manifest(self) -> Manifest:
        return Manifest(self.rows.reset_index(drop=True), self.manifest.file, self.manifest.sha256)

    def digests(self) -> list[bytes]:
        """SHA-256 of each utterance's audio file, in row order (kept in memory, never written)."""
        return [utterance_digest(p) for p in self.audio_paths()]


def build_forget_set(saved: SavedModel, *, files: list[str] | None = None, speaker: str | None = None,
                     n: int | None = None, seed: int = 0, manifest: Path | str | None = None, strict: bool = False,
                     warn=print, data: TrainingData | None = None, forgotten=None) -> ForgetSet:
    """Name D_e by `files`, or by `speaker` (all of their training utterances, or `n` drawn at random).

    `forgotten(digest)` says whether an earlier request already forgot an utterance: N drawn at
    random are drawn among the speaker's utterances that are still to be forgotten."""
    if (files is None) == (speaker is None):
        raise SerkitError("name the forget set with exactly one of --forget FILES.txt or --speaker ID")
    data = data or training_data(saved, manifest)
    held = {s: part for part, speakers in data.held_out.items() for s in speakers}
    if speaker is not None:
        if speaker in held:
            raise SerkitError(f"speaker '{speaker}' is in the {held[speaker]} split: the model never trained on them, "
                              "so there is nothing to forget")
        if speaker not in data.trained_speakers:
            raise SerkitError(f"speaker '{speaker}' is not among the model's training speakers {data.trained_speakers}")
        rows = data.train_rows()
        rows = rows[rows["speaker"] == speaker]
        mode = "speaker"
        if n is not None:
            if n < 1:
                raise SerkitError("--n must be at least 1")
            what = "training utterances"
            if forgotten is not None:
                paths = Manifest(rows, data.manifest.file).audio_paths()
                keep = [not forgotten(utterance_digest(p)) for p in paths]
                if not all(keep):
                    rows, what = rows[keep], f"training utterances not yet forgotten ({len(keep) - sum(keep)} were)"
            if n > len(rows):
                raise SerkitError(f"--n {n} is more than speaker '{speaker}' has ({len(rows)} {what})")
            rows = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
            mode = "random"
        forget = ForgetSet(rows.reset_index(drop=True), data.manifest, mode, seed if n is not None else None)
    else:
        forget = _from_files(files, data, held, strict, warn)
    if len(forget) == 0:
        raise SerkitError("the forget set is empty: none of the listed files is a training utterance of this model")
    forget.as_manifest().check_labels(saved.labels, f"model {saved.path}")
    return forget


def read_file_list(path: Path | str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise SerkitError(f"forget list not found: {path}; give a text file with one audio path per line")
    entries = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not entries:
        raise SerkitError(f"forget list {path} is empty: list one audio path per line")
    return entries


def _from_files(files: list[str], data: TrainingData, held: dict, strict: bool, warn) -> ForgetSet:
    frame = data.manifest.frame
    calibration = data.calibration_mask()
    resolved = {str(p.resolve()): i for i, p in enumerate(data.manifest.audio_paths())}
    by_column = {p: i for i, p in enumerate(frame["path"])}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(frame["path"]):
        by_name.setdefault(Path(p).name, []).append(i)
    chosen, unknown = [], []
    for entry in files:
        if entry in by_column:
            index = by_column[entry]
        elif str(Path(entry).resolve()) in resolved:
            index = resolved[str(Path(entry).resolve())]
        elif len(by_name.get(Path(entry).name, [])) == 1:
            index = by_name[Path(entry).name][0]
        else:
            unknown.append(entry)
            continue
        spk = frame["speaker"].iloc[index]
        if spk in held:
            raise SerkitError(f"{entry} is in the {held[spk]} split (speaker {spk}): the model never trained on it, "
                              "so it cannot be forgotten; remove it from the list")
        if spk not in data.trained_speakers or calibration[index]:  # calibration: held out of training
            unknown.append(entry)
            continue
        chosen.append(index)
    if unknown:
        listing = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        if strict:
            raise SerkitError(f"{len(unknown)} listed file(s) are not training utterances of this model: {listing} (--strict)")
        warn(f"warning: {len(unknown)} listed file(s) are not in the model's training data and are skipped: {listing}")
    rows = frame.iloc[sorted(set(chosen))].reset_index(drop=True)
    return ForgetSet(rows, data.manifest, "files", None, unknown)
