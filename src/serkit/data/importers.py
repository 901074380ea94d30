"""Corpus importers: official layouts (or any folder + CSV) to 16 kHz mono FLAC + manifest.csv.

Labels come from each corpus' own file-name scheme:
- RAVDESS `MM-VV-EE-II-SS-RR-AA` (Livingstone & Russo 2018), speech files only (vocal channel 01);
- EmoDB `SSTTTEV` (Burkhardt et al. 2005), emotion letter from the German word;
- EMOVO `emo-spk-sentence` (Costantini et al. 2014), speakers f1..f3, m1..m3.
Every file is decoded while importing, so a corrupt file is found here and not mid-training.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from serkit import SAMPLE_RATE
from serkit.data.audio import load_audio, write_flac
from serkit.data.manifest import write_manifest
from serkit.errors import AudioError, ManifestError, SerkitError
from serkit.io import OutputDir

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}

RAVDESS_EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happiness", "04": "sadness",
    "05": "anger", "06": "fear", "07": "disgust", "08": "surprise",
}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_PATTERN = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

EMODB_EMOTIONS = {
    "W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral",
}
EMODB_SPEAKERS = {  # speaker: (gender, age), from the corpus documentation
    "03": ("male", "31"), "08": ("female", "34"), "09": ("female", "21"), "10": ("male", "32"),
    "11": ("male", "26"), "12": ("male", "30"), "13": ("female", "32"), "14": ("female", "35"),
    "15": ("male", "25"), "16": ("female", "31"),
}
EMODB_TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMODB_PATTERN = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")

EMOVO_EMOTIONS = {
    "neu": "neutral", "dis": "disgust", "gio": "happiness", "pau": "fear",
    "rab": "anger", "sor": "surprise", "tri": "sadness",
}
EMOVO_PATTERN = re.compile(r"^(neu|dis|gio|pau|rab|sor|tri)-([fm][1-3])-([a-z]\d)$")


def parse_ravdess(stem: str) -> dict | None:
    match = RAVDESS_PATTERN.match(stem)
    if not match:
        return None
    modality, channel, emotion, intensity, statement, repetition, actor = match.groups()
    if modality != "03" or channel != "01" or emotion not in RAVDESS_EMOTIONS:
        return None  # video, song, or not a RAVDESS code
    return {
        "speaker": actor,
        "gender": "male" if int(actor) % 2 else "female",
        "emotion": RAVDESS_EMOTIONS[emotion],
        "sentence_id": statement,
        "text": RAVDESS_STATEMENTS.get(statement, ""),
        "emotion_code": emotion,
        "intensity": {"01": "normal", "02": "strong"}.get(intensity, intensity),
        "repetition": repetition,
    }


def parse_emodb(stem: str) -> dict | None:
    match = EMODB_PATTERN.match(stem)
    if not match or match.group(1) not in EMODB_SPEAKERS:
        return None
    speaker, sentence, letter, version = match.groups()
    gender, age = EMODB_SPEAKERS[speaker]
    return {
        "speaker": speaker, "gender": gender, "emotion": EMODB_EMOTIONS[letter],
        "sentence_id": sentence, "text": EMODB_TEXTS.get(sentence, ""),
        "emotion_code": letter, "version": version, "speaker_age": age,
    }


def parse_emovo(stem: str) -> dict | None:
    match = EMOVO_PATTERN.match(stem)
    if not match:
        return None
    emotion, speaker, sentence = match.groups()
    return {
        "speaker": speaker, "gender": "female" if speaker[0] == "f" else "male",
        "emotion": EMOVO_EMOTIONS[emotion], "sentence_id": sentence, "emotion_code": emotion,
    }


PARSERS: dict[str, Callable[[str], dict | None]] = {
    "ravdess": parse_ravdess, "emodb": parse_emodb, "emovo": parse_emovo,
}
LAYOUTS = {
    "ravdess": "Actor_XX/03-01-EE-II-SS-RR-AA.wav (Zenodo record 1188976, Audio_Speech_Actors_01-24.zip)",
    "emodb": "wav/03a01Fa.wav (http://emodb.bilderbar.info/download/)",
    "emovo": "f1..f3, m1..m3/dis-f1-b1.wav (EMOVO corpus, Costantini et al. 2014)",
}


# The emotion words every importer writes, so that corpora share one label set.
VOCABULARY = sorted({*RAVDESS_EMOTIONS.values(), *EMODB_EMOTIONS.values(), *EMOVO_EMOTIONS.values()})
SYNONYMS = {
    "angry": "anger", "ang": "anger", "happy": "happiness", "hap": "happiness", "sad": "sadness",
    "fearful": "fear", "afraid": "fear", "scared": "fear", "fea": "fear", "disgusted": "disgust", "dis": "disgust",
    "surprised": "surprise", "sur": "surprise", "bored": "boredom", "neu": "neutral",
}


def normalise_label(label: str) -> str:
    """A CSV's emotion in the shared vocabulary: case and spacing folded, common synonyms mapped
    ("Angry" -> "anger"); a word outside it comes back folded (the caller warns)."""
    folded = " ".join(label.split()).lower()
    return SYNONYMS.get(folded, folded)


@dataclass
class ImportReport:
    out_dir: Path
    n_files: int
    n_copied: int
    n_linked: int
    skipped: list[str] = field(default_factory=list)
    ignored: int = 0  # files in SRC whose name is not part of the corpus scheme
    relabelled: dict[str, str] = field(default_factory=dict)  # a label CSV's words -> the vocabulary's
    unknown_labels: list[str] = field(default_factory=list)  # folded labels outside VOCABULARY, kept


def import_corpus(
    corpus: str,
    src: Path | str,
    out: Path | str,
    link: bool = False,
    skip_bad: bool = False,
    csv: Path | str | None = None,
    path_column: str = "path",
    speaker_column: str = "speaker",
    emotion_column: str = "emotion",
    gender_column: str = "gender",
    workers: int | None = None,
) -> ImportReport:
    """Import `src` into `out` (a new directory) as 16 kHz mono FLAC + manifest.csv.

    With `link`, files that are already 16 kHz mono are referenced in place (absolute paths)
    instead of copied. With `skip_bad`, undecodable files are left out and listed; otherwise the
    first one stops the import and nothing is written. A label CSV's emotions are brought into
    the shared vocabulary (`normalise_label`); the report lists what was mapped and what is unknown.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise SerkitError(f"corpus folder not found: {src}; pass the folder that holds the corpus")
    if corpus != "folder" and corpus not in PARSERS:
        raise SerkitError(f"unknown corpus '{corpus}'; choose one of {sorted(PARSERS) + ['folder']}")
    with OutputDir(out, what="output folder") as output:  # taken or unwritable: fails before any file is read
        ignored, relabelled = 0, {}
        if corpus == "folder":
            rows, relabelled = _rows_from_csv(src, csv, path_column, speaker_column, emotion_column, gender_column)
        else:
            rows, ignored = _rows_from_names(corpus, src)
        tmp = output.staging()
        (tmp / "audio").mkdir()
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda row: _convert(row, tmp / "audio", link), rows))
        bad = [r for r in results if isinstance(r, AudioError)]
        if bad and not skip_bad:
            raise AudioError(f"{bad[0]} ({len(bad)} bad file(s) in all; --skip-bad leaves them out and lists them)")
        good = [r for r in results if not isinstance(r, AudioError)]
        if not good:
            raise SerkitError(f"no usable audio in {src}")
        n_linked = sum(r.pop("_linked") for r in good)
        for r in good:
            r.pop("_name")
        frame = pd.DataFrame(good).sort_values("path", kind="stable").reset_index(drop=True)
        write_manifest(frame, tmp / "manifest.csv")
        if n_linked == len(good):
            (tmp / "audio").rmdir()
        output.commit()
    unknown = sorted({e for e in frame["emotion"] if e not in VOCABULARY}) if corpus == "folder" else []
    return ImportReport(out, len(good), len(good) - n_linked, n_linked, [str(b) for b in bad], ignored,
                        relabelled=relabelled, unknown_labels=unknown)


def _convert(row: dict, audio_dir: Path, link: bool) -> dict | AudioError:
    """Decode one file (so a corrupt one is found now), then reference it in place or write it as FLAC."""
    source = row.pop("_source")
    try:
        wave = load_audio(source)
        info = sf.info(str(source))
    except AudioError as exc:
        return exc
    row["duration_s"] = round(wave.shape[0] / SAMPLE_RATE, 4)
    row["orig_sr"] = info.samplerate
    row["orig_channels"] = info.channels
    row["source"] = str(source.resolve())
    if link and info.samplerate == SAMPLE_RATE and info.channels == 1:
        row["path"] = str(source.resolve())
        row["_linked"] = True
    else:
        target = audio_dir / f"{row['_name']}.flac"
        write_flac(target, wave)
        row["path"] = f"audio/{target.name}"
        row["_linked"] = False
    return row


def _audio_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _rows_from_names(corpus: str, src: Path) -> tuple[list[dict], int]:
    parse = PARSERS[corpus]
    rows, seen, ignored = [], {}, 0
    for path in _audio_files(src):
        fields = parse(path.stem)
        if fields is None:
            ignored += 1
            continue
        if path.stem in seen:
            raise SerkitError(
                f"{path.stem} appears twice: {seen[path.stem]} and {path}; point SRC at one copy of the corpus"
            )
        seen[path.stem] = path
        rows.append({"_source": path, "_name": path.stem, **fields})
    if not rows:
        raise SerkitError(f"no {corpus} files found under {src}; expected the official layout {LAYOUTS[corpus]}")
    return rows, ignored


def _rows_from_csv(src: Path, csv, path_col, speaker_col, emotion_col, gender_col) -> tuple[list[dict], dict[str, str]]:
    if csv is None:
        raise SerkitError("importing a folder needs --csv LABELS.csv with path, speaker and emotion columns")
    csv = Path(csv)
    table = _read_label_csv(csv, (path_col, speaker_col, emotion_col))
    if table[path_col].duplicated().any():
        dup = table[path_col][table[path_col].duplicated()].iloc[0]
        raise ManifestError(f"label CSV {csv} lists {dup} more than once; each file must appear once")
    rows, names, relabelled = [], set(), {}
    for _, rec in table.iterrows():
        source = Path(rec[path_col])
        source = source if source.is_absolute() else src / source
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(rec[path_col]).with_suffix("")))
        if name in names:
            raise ManifestError(f"label CSV {csv}: two files map to the output name {name}; rename one")
        names.add(name)
        row = {"_source": source, "_name": name, "speaker": rec[speaker_col].strip(),
               "emotion": normalise_label(rec[emotion_col])}
        if row["emotion"] != rec[emotion_col].strip():
            relabelled[rec[emotion_col].strip()] = row["emotion"]
        for col in (speaker_col, emotion_col):
            if not rec[col].strip():
                raise ManifestError(f"label CSV {csv}: empty '{col}' for {rec[path_col]}; fill it in or drop the row")
        if gender_col in table.columns:
            row["gender"] = rec[gender_col].strip()
        for col in table.columns:
            if col not in (path_col, speaker_col, emotion_col, gender_col):
                row[col] = rec[col]
        rows.append(row)
    return rows, relabelled


def _read_label_csv(csv: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not csv.is_file():
        raise ManifestError(f"label CSV not found: {csv}")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"label CSV {csv} is empty (not even a header); give a header {','.join(required)} "
                            "and one row per audio file") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot parse label CSV {csv} ({str(exc).strip().splitlines()[-1]}); is it a comma-separated "
                            "file?") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ManifestError(
            f"label CSV {csv} lacks column(s) {missing} (has {list(table.columns)}); "
            "name them with --path-column/--speaker-column/--emotion-column"
        )
    if table.empty:
        raise ManifestError(f"label CSV {csv} is empty: it has a header but no rows; add one row per audio file")
    return table
