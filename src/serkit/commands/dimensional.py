"""`serkit transcribe`: ASR transcripts for the audio+text models of paper 004."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console, progress_bar


def transcribe(
    manifest: Path = typer.Argument(..., help="manifest.csv of the utterances"),
    out: Path = typer.Option(..., "-o", "--out", help="new manifest CSV: the input's columns plus the transcripts"),
    model: str = typer.Option("builtin:whisper-tiny.en", help="builtin:whisper-tiny.en (English only), a local "
                              "faster-whisper (CTranslate2) directory, or a transformers Whisper directory (with its "
                              "decoder and tokenizer.json)"),
    column: str = typer.Option("asr_text", help="name of the new column"),
    language: str | None = typer.Option(None, help="language code for multilingual models (e.g. de)"),
    batch_size: int = 8,
    engine: str = typer.Option("auto", help="auto (ctranslate2 for a CTranslate2 checkpoint when faster-whisper is "
                               "installed, else transformers), ctranslate2 or transformers"),
    window: float = typer.Option(30.0, help="ctranslate2: seconds of audio per window (Whisper's own: 30); shorter is "
                                 "faster, and below about 15 s Whisper starts repeating itself (bench/RESULTS.md 24)"),
    compute_type: str = typer.Option("float32", help="ctranslate2: weight type: float32 (the same transcripts as transformers) "
                                      "or int8 (faster, a few transcripts differ: bench/RESULTS.md 24)"),
):
    """ASR transcripts for a manifest (cached per model and audio file); WER against its `text` column if any."""
    from serkit.dimensional.transcribe import transcribe as run_asr

    with progress_bar("transcribing") as update:
        report = run_asr(manifest, out, model=model, column=column, batch_size=batch_size, language=language,
                         engine=engine, window=window, compute_type=compute_type, log=console.print, progress=update)
    wer = f"; WER against the manifest's text {report['wer_vs_text']:.3f}" if "wer_vs_text" in report else ""
    console.print(f"{report['utterances']} transcripts ({report['decoded']} decoded in {report['seconds']:.0f} s){wer}")
    console.print(f"wrote {out} and {out.with_suffix('.json')}")


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe)
