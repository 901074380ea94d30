"""`serkit data import|info|split`: corpora in, manifests inspected, speaker-independent splits out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from serkit.commands._shared import console, print_note
from serkit.errors import SerkitError


class Corpus(str, Enum):
    ravdess = "ravdess"
    emodb = "emodb"
    emovo = "emovo"
    folder = "folder"


def data_import(
    corpus: Corpus = typer.Argument(..., help="corpus layout to read"),
    src: Path = typer.Argument(..., help="folder holding the corpus (its official layout)"),
    out: Path = typer.Option(..., "-o", "--out", help="new folder for audio/ and manifest.csv"),
    link: bool = typer.Option(False, help="reference files that are already 16 kHz mono in place instead of copying"),
    skip_bad: bool = typer.Option(False, help="leave out undecodable files (listed) instead of stopping"),
    csv: Path | None = typer.Option(None, help="folder corpus: CSV with path, speaker, emotion (and gender) columns"),
    path_column: str = "path", speaker_column: str = "speaker", emotion_column: str = "emotion",
    gender_column: str = "gender",
):
    """Import a corpus to 16 kHz mono FLAC + manifest.csv; labels from the corpus' file names."""
    from serkit.data.importers import import_corpus

    with console.status(f"importing {corpus.value} from {src}"):
        report = import_corpus(corpus.value, src, out, link=link, skip_bad=skip_bad, csv=csv,
                               path_column=path_column, speaker_column=speaker_column,
                               emotion_column=emotion_column, gender_column=gender_column)
    console.print(f"imported {report.n_files} utterances to {out / 'manifest.csv'} "
                  f"({report.n_copied} converted to FLAC, {report.n_linked} referenced in place)")
    if report.ignored:
        console.print(f"ignored {report.ignored} files whose names are not {corpus.value} speech files")
    if report.relabelled:
        mapped = ", ".join(f"{a!r} -> {b}" for a, b in sorted(report.relabelled.items()))
        console.print(f"labels written in serkit's vocabulary: {escape(mapped)}", highlight=False)
    if report.unknown_labels:
        from serkit.data.importers import VOCABULARY

        print_note("warning", f"label(s) {', '.join(report.unknown_labels)} are not in serkit's vocabulary "
                   f"({', '.join(VOCABULARY)}); kept in lower case: map them in the CSV if they mean one of those")
    for bad in report.skipped:
        console.print(f"[yellow]skipped[/] {bad}")


def data_info(manifest: Path = typer.Argument(..., help="manifest.csv")):
    """Speakers, emotions and durations of a manifest."""
    from serkit.data.manifest import read_manifest

    m = read_manifest(manifest)
    frame = m.frame
    table = Table(title=f"{m.file}: {len(frame)} utterances, {frame['speaker'].nunique()} speakers")
    table.add_column("emotion")
    table.add_column("utterances", justify="right")
    for emotion, count in frame["emotion"].value_counts().sort_index().items():
        table.add_row(emotion, str(count))
    console.print(table)
    if "duration_s" in frame.columns:
        d = frame["duration_s"]
        console.print(f"duration: {d.sum() / 60:.1f} min in all, {d.min():.2f}-{d.max():.2f} s per utterance (median {d.median():.2f})")
    if "gender" in frame.columns:
        genders = frame.groupby("speaker")["gender"].first().value_counts()
        console.print("speakers by gender: " + ", ".join(f"{g} {n}" for g, n in genders.items()))


def _speakers_summary(m, speakers: list[str]) -> tuple[int, str]:
    """Utterances of these speakers, and their gender mix as ' (female 1, male 1)' ('' without genders)."""
    n = int(m.frame["speaker"].isin(speakers).sum())
    if "gender" not in m.frame.columns or not speakers:
        return n, ""
    counts = m.frame.groupby("speaker")["gender"].first()[speakers].value_counts()
    return n, " (" + ", ".join(f"{g} {c}" for g, c in counts.items()) + ")"


def data_split(
    manifest: Path = typer.Argument(..., help="manifest.csv"),
    out: Path = typer.Option(..., "-o", "--out", help="split file to write (JSON)"),
    val: float = typer.Option(0.25, help="validation speakers: a count (>= 1) or a fraction"),
    test: float = typer.Option(0.25, help="test speakers: a count (>= 1) or a fraction"),
    seed: int = typer.Option(0, help="seed for choosing speakers"),
    loso: bool = typer.Option(False, "--loso", help="leave-one-speaker-out folds instead of one hold-out split"),
    loso_val: int = typer.Option(1, help="with --loso: validation speakers per fold"),
    folds: int | None = typer.Option(None, "--folds", help="K speaker folds: each fold tests one group of speakers "
                                     "and validates on the next fold's group"),
):
    """Speaker-independent split (gender-balanced where the corpus allows), audited for leakage."""
    from serkit.data.manifest import read_manifest
    from serkit.data.splits import holdout_split, loso_folds, save_split, speaker_folds
    from serkit.io import check_new_file

    check_new_file(out, "split file")
    m = read_manifest(manifest)
    if folds is not None:
        if loso:
            raise SerkitError("give --loso or --folds K, not both")
        made = speaker_folds(m, folds, seed)
        save_split(out, m, seed, folds=made, kind="folds")
        for i, f in enumerate(made):
            n, mix = _speakers_summary(m, f["test"])
            console.print(f"fold {i}: test {' '.join(f['test'])}{mix}, {n} utterances; val {' '.join(f['val'])}")
        console.print(f"wrote {len(made)} speaker folds to {out}")
        return
    if loso:
        folds = loso_folds(m, loso_val, seed)
        save_split(out, m, seed, folds=folds)
        console.print(f"wrote {len(folds)} leave-one-speaker-out folds to {out}")
        return
    parts = holdout_split(m, val, test, seed)
    save_split(out, m, seed, parts=parts)
    for name, speakers in parts.items():
        n, mix = _speakers_summary(m, speakers)
        console.print(f"{name:5s}: {len(speakers):2d} speakers{mix}, {n} utterances: {' '.join(speakers)}")
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Import corpora, inspect manifests, make speaker-independent splits.", no_args_is_help=True)
    data_app.command("import")(data_import)
    data_app.command("info")(data_info)
    data_app.command("split")(data_split)
    app.add_typer(data_app, name="data")
