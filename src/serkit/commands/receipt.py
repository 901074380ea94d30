"""`serkit receipt verify` and `serkit keys`: check a deletion record; make and share its keys."""

from __future__ import annotations

from pathlib import Path

import typer

from serkit.commands._shared import console


def verify_cmd(
    receipts: list[Path] = typer.Argument(..., help="receipt.json (or its folder); with --chain, several, oldest first"),
    chain: bool = typer.Option(False, "--chain", help="check that the receipts form one unbroken chain of requests"),
    model: Path | None = typer.Option(None, help="the model directory the receipt should describe (its model_after)"),
    public_key: Path | None = typer.Option(None, help="the signer's signing.pub: the receipt must be signed by it"),
    forget_list: Path | None = typer.Option(None, "--forget", help="text file, one audio path per line: must be "
                                            "exactly the committed forget set"),
    key: Path | None = typer.Option(None, "--key", help="the request's forget-keys.json (opens the commitments)"),
    data: Path | None = typer.Option(None, "--data", help="the split the request was evaluated on: re-evaluate the "
                                     "model and compare the figures (needs --forget)"),
    manifest: Path | None = typer.Option(None, help="with --data: the split's manifest, where it has moved"),
    tolerance: float = typer.Option(0.01, min=0, help="largest difference in UAR, accuracy or AUC accepted on re-evaluation"),
):
    """Check a receipt: signature, model, forget set and figures, each OK or FAIL; exit 1 on any FAIL."""
    from serkit.errors import SerkitError
    from serkit.unlearning.forget_set import read_file_list
    from serkit.unlearning.verify import verify, verify_chain

    if chain:
        extra = [name for name, value in (("--model", model), ("--forget", forget_list), ("--data", data)) if value]
        if extra:
            raise SerkitError(f"--chain checks the links between receipts; check one receipt's {', '.join(extra)} "
                              "without --chain")
        checks = verify_chain(receipts, public_key)
    else:
        if len(receipts) != 1:
            raise SerkitError(f"give one receipt ({len(receipts)} given), or --chain to check several as a chain")
        files = read_file_list(forget_list) if forget_list else None
        checks = verify(receipts[0], model=model, public_key=public_key, forget_files=files, keys=key, split=data,
                        manifest=manifest, tolerance=tolerance)
    for check in checks:
        style = {True: "green", False: "bold red", None: "dim"}[check.ok]
        console.print(f"[{style}]{check.line()}[/]", highlight=False)
    failed = sum(c.ok is False for c in checks)
    console.print(f"{failed} check(s) failed" if failed else f"all {sum(c.ok is True for c in checks)} checks passed",
                  highlight=False)
    if failed:
        raise typer.Exit(1)


def keys_new(out: Path = typer.Option(..., "-o", "--out", help="folder for signing.key (private, mode 600) and signing.pub")):
    """A new Ed25519 key pair to sign receipts with (serkit forget --sign-key OUT/signing.key)."""
    from serkit.unlearning.keys import fingerprint, load_public_key, new_signing_key

    private, public = new_signing_key(out)
    console.print(f"wrote {private} (private: keep it secret) and {public} (give it to whoever verifies your "
                  f"receipts); fingerprint {fingerprint(load_public_key(public))}", highlight=False)


def keys_extract(
    keys: Path = typer.Argument(..., help="a forget-keys.json (it holds the keys of every request of a lineage)"),
    receipt: Path = typer.Option(..., help="the receipt of the request whose key to extract"),
    out: Path = typer.Option(..., "-o", "--out", help="new keys file holding that request's key alone (mode 600)"),
):
    """The key of one request alone, for its data subject: they can open their commitments, no one else's."""
    from serkit.unlearning.keys import load_request_keys
    from serkit.unlearning.receipts import read_receipt

    request_id = read_receipt(receipt)["request_id"]
    load_request_keys(keys).only(request_id).save(out)
    console.print(f"wrote {out}: the key of request {request_id[:12]}… alone", highlight=False)


def register(app: typer.Typer) -> None:
    receipt_app = typer.Typer(help="Check deletion receipts.", no_args_is_help=True)
    receipt_app.command("verify")(verify_cmd)
    keys_app = typer.Typer(help="Signing keys for receipts, and request keys to share with a data subject.",
                           no_args_is_help=True)
    keys_app.command("new")(keys_new)
    keys_app.command("extract")(keys_extract)
    app.add_typer(receipt_app, name="receipt")
    app.add_typer(keys_app, name="keys")
