"""`serkit forget`: answer a deletion request from the forget set alone (papers 000/001)."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console, progress_bar


def forget_cmd(
    model_dir: Path = typer.Argument(..., help="the trained serkit model directory (never modified)"),
    out: Path | None = typer.Option(None, "-o", "--out", help="new folder: model/, receipt.json, report.md, "
                                    "forget-keys.json and after pgu forget-keys.moments.safetensors, both private "
                                    "(with --reproduce: keep the re-run there)"),
    forget_list: Path | None = typer.Option(None, "--forget", help="text file, one audio path per line"),
    speaker: str | None = typer.Option(None, help="forget this training speaker (all utterances, or --n of them)"),
    n: int | None = typer.Option(None, "--n", help="with --speaker: forget N utterances drawn at random"),
    seed: int = typer.Option(0, help="seed for drawing utterances, wrong labels, PGD and batch order"),
    method: str | None = typer.Option(None, help="pgu, adv-ewc, adv, random-label, neg-grad, l2ul, ssd, jit, amun, "
                                       "remain, retrain (default: pgu where head moments of the model's weights "
                                       "exist: serkit train stores them, a pgu request leaves them beside its keys; "
                                       "adv-ewc otherwise)"),
    set_: list[str] = typer.Option([], "--set", help="method parameter, e.g. --set tau=0.02 --set epochs=10"),
    eval_part: str | None = typer.Option(None, help="unseen speakers to evaluate on: val or test (default val if held out)"),
    split: Path | None = typer.Option(None, help="the split the model was trained with (needed once a model has "
                                      "answered a request: it keeps its speakers private)"),
    manifest: Path | None = typer.Option(None, help="the model's manifest, where the recorded one has moved"),
    key: Path | None = typer.Option(None, "--key", help="the forget-keys.json of the request that made MODEL_DIR "
                                    "(default: the one beside it; pgu reads the moments beside it)"),
    key_out: Path | None = typer.Option(None, help="write this request's keys file (and the moments pgu leaves "
                                        "beside it) here instead of OUT/forget-keys.json"),
    sign_key: Path | None = typer.Option(None, help="sign the receipt with this Ed25519 key (serkit keys new)"),
    skip_forgotten: bool = typer.Option(False, help="leave out (and list) utterances an earlier request already "
                                        "forgot, instead of refusing the request"),
    require_target: bool = typer.Option(False, help="exit non-zero, writing nothing, if the forget set is still "
                                        "recognised at the end"),
    reproduce: Path | None = typer.Option(None, help="re-run the request of this receipt (name its forget set the "
                                          "same way) and say whether the result is identical"),
    remain: Path | None = typer.Option(None, help="method remain: the training manifest (D_r = it minus the forget set)"),
    retrained: Path | None = typer.Option(None, help="a model retrained without the forget set, to compare against"),
    strict: bool = typer.Option(False, help="refuse listed files that are not training utterances (default: warn, skip)"),
    overwrite: bool = typer.Option(False, help="replace an existing output of serkit forget (never anything else)"),
    device: str = typer.Option("auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"),
):
    """Make a model forget utterances using those utterances alone; write the new model and a receipt."""
    from serkit.config import parse_value
    from serkit.errors import SerkitError
    from serkit.unlearning.forget_set import read_file_list
    from serkit.unlearning.run import forget
    from serkit.unlearning.run import reproduce as rerun

    files = read_file_list(forget_list) if forget_list else None
    if reproduce is not None:
        given = [name for name, value in (("--set", set_), ("--method", method is not None), ("--eval-part", eval_part),
                                          ("--seed", seed != 0), ("--sign-key", sign_key), ("--key-out", key_out),
                                          ("--skip-forgotten", skip_forgotten), ("--require-target", require_target),
                                          ("--retrained", retrained), ("--overwrite", overwrite)) if value]
        if given:
            raise SerkitError(f"--reproduce takes the method, parameters, seed and evaluation part from the receipt "
                              f"and writes no new request; drop {', '.join(given)}")
        result = rerun(model_dir, reproduce, files=files, speaker=speaker, n=n, keys=key, manifest=manifest,
                       split=split, remain=remain, strict=strict, out=out, device=device, log=console.print,
                           progress=progress_bar)
        for line in result.lines:
            console.print(line, highlight=False)
        console.print("reproduced: identical" if result.identical else "reproduced: NOT identical", highlight=False)
        if not result.identical:
            raise typer.Exit(1)
        return
    if out is None:
        raise SerkitError("give the new output folder: -o OUT")
    params = {}
    for item in set_:
        if "=" not in item:
            raise SerkitError(f"--set {item!r}: expected key=value, e.g. --set tau=0.02")
        name, value = item.split("=", 1)
        params[name.strip()] = parse_value(value)
    result = forget(model_dir, out, files=files, speaker=speaker, n=n, seed=seed, method=method, params=params,
                    eval_part=eval_part, manifest=manifest, split=split, remain=remain, strict=strict,
                    overwrite=overwrite, retrained=retrained, device=device, keys=key, keys_out=key_out,
                    sign_key=sign_key, skip_forgotten=skip_forgotten, require_target=require_target, log=console.print,
                    progress=progress_bar)
    receipt = result.receipt
    ev = receipt["evaluation"]
    part = ev["unseen_part"]
    console.print(f"forget-set UAR {ev['before']['forget']['uar']:.3f} -> {ev['after']['forget']['uar']:.3f}; "
                  f"{part} UAR {ev['before'][part]['uar']:.3f} -> {ev['after'][part]['uar']:.3f} "
                  f"({ev['unseen_uar_kept']:.0%} kept); membership AUC {ev['before']['membership']['auc']:.2f} -> "
                  f"{ev['after']['membership']['auc']:.2f}; {receipt['timing']['unlearn_seconds']:.0f} s", highlight=False)
    signed = f", signed by {receipt['signature']['key_fingerprint']}" if "signature" in receipt else ", not signed"
    console.print(f"wrote {result.out_dir}/ (model/, receipt.json{signed}, report.md); request "
                  f"{receipt['chain']['index']} of this model's lineage, model {receipt['model_after']['weights_sha256'][:16]}…",
                  highlight=False)
    console.print(f"secret: {result.keys_file} (mode 600) opens the receipt's commitments; keep it apart from the "
                  "model and the receipt you share", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("forget")(forget_cmd)
