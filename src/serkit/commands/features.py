"""`serkit features opensmile|boaw`: handcrafted features as embedding files (paper 002's baselines)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console, progress_bar


def _save(out: Path, array, meta: dict, rows) -> None:
    from serkit.inference.embeddings import save_embeddings

    meta = {**meta, "manifest": str(rows.file), "manifest_sha256": rows.sha256, "paths": list(rows.frame["path"])}
    save_embeddings(out, array, meta)
    console.print(f"wrote {out} ({array.shape[0]} utterances x {array.shape[1]}) and {out.with_suffix('.json')}")


def opensmile_cmd(
    manifest: Path = typer.Argument(..., help="manifest.csv"),
    out: Path = typer.Option(..., "-o", "--out", help="new .npy (a .json beside it records the manifest)"),
    feature_set: str = typer.Option("eGeMAPSv02", "--set", help="ComParE_2016, eGeMAPSv02, ... (openSMILE's sets)"),
):
    """openSMILE functionals per utterance (research/education licence: see the note printed)."""
    from serkit.analysis.features import LICENCE, opensmile_functionals
    from serkit.data.manifest import read_manifest

    rows = read_manifest(manifest)
    with progress_bar(f"{feature_set} functionals") as update:
        array, meta = opensmile_functionals(rows, feature_set, log=console.print, progress=update)
    _save(out, array, meta, rows)
    console.print(f"note: {LICENCE}")


def boaw_cmd(
    split: Path = typer.Argument(..., help="split file: codebooks are learnt on its training speakers only"),
    out: Path = typer.Option(..., "-o", "--out", help="new .npy over every row of the split's manifest"),
    feature_set: str = typer.Option("ComParE_2016", "--set", help="openSMILE LLD set (ComParE_2016, eGeMAPSv02, ...)"),
    words: int = typer.Option(500, help="codebook size per stream (paper: 500)"),
    seed: int = 0,
    manifest: Path | None = typer.Option(None, help="override the manifest the split names"),
):
    """Bags of audio words over openSMILE LLDs and deltas; codebooks from the training speakers only."""
    from serkit.analysis.features import LICENCE, bag_of_audio_words
    from serkit.data.splits import load_split

    loaded = load_split(split, manifest)
    rows = loaded.manifest
    with progress_bar(f"{feature_set} descriptors") as update:
        array, meta = bag_of_audio_words(rows, loaded.speakers("train"), feature_set, words, seed, log=console.print,
                                         progress=update)
    _save(out, array, {**meta, "split": str(split.resolve())}, rows)
    console.print(f"note: {LICENCE}")


def register(app: typer.Typer) -> None:
    features_app = typer.Typer(help="Handcrafted features (openSMILE functionals, bags of audio words) for `serkit probe`.",
                               no_args_is_help=True)
    features_app.command("opensmile")(opensmile_cmd)
    features_app.command("boaw")(boaw_cmd)
    app.add_typer(features_app, name="features")
