"""`serkit export`: a model for on-device use, checked against PyTorch (paper 003's small models)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console
from serkit.errors import SerkitError


def export_cmd(
    model_dir: Path = typer.Argument(..., help="a serkit model directory"),
    out: Path = typer.Option(..., "-o", "--out", help="new folder: model.onnx (+ model.int8.onnx), serkit_model.json, export.json"),
    onnx: bool = typer.Option(True, "--onnx", help="export to ONNX (the on-device format serkit writes)"),
    int8: bool = typer.Option(False, "--int8", help="also write an int8 model (its agreement with PyTorch is reported)"),
    int8_mode: str = typer.Option(None, "--int8-mode", help="with --int8: static (the default: weights and activations "
                                  "in int8, ranges read from calibration audio; bench/RESULTS.md 34) or dynamic "
                                  "(weights only, no audio needed)"),
    calibration: Path = typer.Option(None, "--calibration", help="static int8: a manifest whose utterances give the "
                                     "activation ranges (default: the model's own training speakers)"),
    hf: bool = typer.Option(False, "--hf", help="instead, a transformers directory: pipeline('audio-classification', "
                            "model=OUT) runs it after `import serkit`"),
):
    """Export a model for on-device use (ONNX, optionally int8) or for transformers (--hf), checked against PyTorch."""
    from serkit.models import load_model
    from serkit.transfer.export import export_onnx

    saved = load_model(model_dir)
    if hf:
        from serkit.hf.export import export_hf

        if int8 or int8_mode or calibration:
            raise SerkitError("--int8, --int8-mode and --calibration are ONNX options; --hf writes the float model")
        with console.status("exporting and checking through transformers' pipeline"):
            export_hf(saved, out, log=console.print)
        console.print(f"wrote {out}/: import serkit; transformers.pipeline('audio-classification', model='{out}')")
        return
    if int8_mode and not int8:
        raise SerkitError(f"--int8-mode {int8_mode} chooses how --int8 quantises: add --int8")
    with console.status("exporting and checking"):
        report = export_onnx(saved, out, int8=int8, int8_mode=int8_mode or "static", calibration=calibration)
    fp = report["fp32"]
    console.print(f"model.onnx: {fp['bytes'] / 2**20:.1f} MB, max logit difference to PyTorch {fp['max_abs_logit_diff']:.2g} "
                  f"(tolerance {fp['tolerance']:g}), {fp['latency_ms_3s']:.1f} ms per 3 s utterance "
                  f"(PyTorch {report['torch']['latency_ms_3s']:.1f} ms); checked on {report['checked_on']}")
    if "int8" in report:
        q = report["int8"]
        console.print(f"model.int8.onnx ({q['mode']}): {q['bytes'] / 2**20:.1f} MB, {q['prediction_agreement']:.0%} of "
                      "predictions as PyTorch, "
                      f"max probability difference {q['max_abs_prob_diff']:.3f}, {q['latency_ms_3s']:.1f} ms per 3 s utterance")
    console.print(f"wrote {out}/")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
