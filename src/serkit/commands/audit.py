"""`serkit audit`: each forget utterance, tested against models retrained without the forget set (U-LiRA)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console


def audit_cmd(
    model_dir: Path = typer.Argument(..., help="the model the deletion requests were made on"),
    unlearned: list[Path] = typer.Option(..., "--unlearned", help="a serkit forget output to audit (repeat for several)"),
    retrained: list[Path] = typer.Option(..., "--retrained", help="a serkit forget --method retrain output of the same "
                                         "forget set (at least 2; repeat)"),
    trained: list[Path] = typer.Option([], "--trained", help="a model trained WITH the forget set (e.g. MODEL_DIR, other "
                                       "seeds of its recipe), for LiRA's likelihood ratio (at least 2; repeat)"),
    forget_list: Path | None = typer.Option(None, "--forget", help="the forget set, as the requests named it: a text "
                                            "file, one audio path per line"),
    speaker: str | None = typer.Option(None, help="... or a training speaker (all utterances, or --n of them)"),
    n: int | None = typer.Option(None, "--n", help="with --speaker: N utterances drawn at random"),
    seed: int = typer.Option(0, help="with --n: the seed the requests drew them with"),
    split: Path | None = typer.Option(None, help="the split MODEL_DIR was trained with, where it keeps its speakers private"),
    manifest: Path | None = typer.Option(None, help="MODEL_DIR's manifest, where the recorded one has moved"),
    out: Path | None = typer.Option(None, "-o", "--out", help="new folder for audit.json and audit.md"),
):
    """Is an unlearned model, utterance by utterance, what retraining gives? An AUC per unlearned model."""
    from serkit.io import refuse_existing
    from serkit.unlearning.audit import audit_markdown, run_audit, write_audit
    from serkit.unlearning.forget_set import read_file_list

    if out is not None:
        refuse_existing(out, "audit output")
    files = read_file_list(forget_list) if forget_list else None
    audit = run_audit(model_dir, unlearned, retrained, trained, files=files, speaker=speaker, n=n, seed=seed,
                      manifest=manifest, split=split, log=console.print)
    console.print(audit_markdown(audit), highlight=False)
    if out is not None:
        write_audit(audit, out)
        console.print(f"wrote {out}/ (audit.json, audit.md)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)
