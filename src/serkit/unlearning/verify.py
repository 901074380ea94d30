"""`serkit receipt verify`: is this the model the receipt describes, untampered, and do its figures hold?

Each check is one line, OK or FAIL (or a note where there is nothing to check):
- signature: the Ed25519 signature covers the receipt's canonical form; with a public key, it is
  that key's;
- figures agree: the kept UAR is the after/before ratio the receipt states (an edit of one figure
  in an unsigned receipt still shows here);
- model: the directory's weights are the receipt's model_after, and its provenance names this request;
- forget set: the given files are exactly the committed ones (needs the request's key);
- data, re-evaluated: the forget-set, unseen-speaker and membership figures of the model, measured
  again, are within `tolerance` of the receipt's (needs the split and the forget files);
- chain: each receipt's model_before is the previous one's model_after, and it points at the
  previous receipt by SHA-256, with no request missing between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serkit.errors import SerkitError
from serkit.io import sha256_file
from serkit.unlearning.commitments import compare, utterance_digest
from serkit.unlearning.keys import UnknownRequestError, embedded_public_key, fingerprint, load_public_key, load_request_keys, signature_valid
from serkit.unlearning.receipts import canonical_bytes, read_receipt, receipt_sha256

TOLERANCE = 0.01  # absolute, on UAR, accuracy and AUC: a re-run on another machine may flip a prediction or two
COMPARED = ("uar", "accuracy", "auc", "attack_accuracy")


@dataclass
class Check:
    name: str
    ok: bool | None  # None: nothing to check (e.g. an unsigned receipt and no public key)
    detail: str

    def line(self) -> str:
        mark = {True: "OK  ", False: "FAIL", None: "--  "}[self.ok]
        return f"{mark}  {self.name}: {self.detail}"


def verify(receipt_path: Path | str, *, model: Path | str | None = None, public_key: Path | str | None = None,
           forget_files: list[str] | None = None, keys: Path | str | None = None, split: Path | str | None = None,
           manifest: Path | str | None = None, tolerance: float = TOLERANCE) -> list[Check]:
    receipt = read_receipt(receipt_path)
    if split is not None and forget_files is None:
        raise SerkitError("--data re-evaluates the forget-set figures too: give the forget set with --forget FILES.txt "
                          "(and its key with --key)")
    if forget_files is not None and keys is None:
        raise SerkitError("--forget needs the request's key to open the commitments: --key forget-keys.json")
    checks = [check_signature(receipt, public_key), check_consistency(receipt)]
    model_dir = Path(model) if model is not None else (_beside(receipt_path) / "model" if split is not None else None)
    model_check = check_model(receipt, model_dir) if model_dir is not None else None
    if model_check is not None:  # a model re-evaluated below must be the receipt's, or its figures mean nothing
        checks.append(model_check)
    if forget_files is not None:
        checks.append(check_forget_set(receipt, forget_files, keys))
    if split is not None and model_check.ok is False:
        checks.append(Check("figures, re-evaluated", None, f"not measured: {model_dir} is not the receipt's model"))
    elif split is not None:
        checks.extend(check_figures(receipt, model_dir, forget_files, split, manifest, tolerance))
    return checks


def _beside(receipt_path: Path | str) -> Path:
    path = Path(receipt_path)
    return path if path.is_dir() else path.parent


def check_signature(receipt: dict, public_key: Path | str | None) -> Check:
    """OK only against a key the caller trusts: anyone can re-sign an edited receipt with a key of their own,
    so a signature that is merely intact under the key it carries proves nothing about who signed."""
    signature = receipt.get("signature")
    if not signature:
        if public_key is not None:
            return Check("signature", False, "the receipt is not signed, so it cannot be the given key's")
        return Check("signature", None, "not signed (sign receipts with serkit forget --sign-key)")
    embedded = embedded_public_key(signature)
    if embedded is None or signature.get("algorithm") != "ed25519":
        return Check("signature", False, "the signature field is damaged (no Ed25519 public key in it)")
    if signature.get("key_fingerprint") != fingerprint(embedded):
        return Check("signature", False, f"its key_fingerprint {signature.get('key_fingerprint')} is not the fingerprint "
                     f"of the key it carries ({fingerprint(embedded)}): the signature field was edited")
    if public_key is not None:
        trusted = load_public_key(public_key)
        if fingerprint(trusted) != fingerprint(embedded):
            return Check("signature", False, f"signed by key {fingerprint(embedded)}, not by the given key {fingerprint(trusted)}")
    if not signature_valid(signature, canonical_bytes(receipt), embedded):
        return Check("signature", False, "does not match the receipt's contents: it was changed after signing")
    if public_key is None:
        return Check("signature", None, f"intact under the key it carries, {fingerprint(embedded)}, which is not checked "
                     "against a key you trust: give the signer's signing.pub with --public-key")
    return Check("signature", True, f"Ed25519, by the given key {fingerprint(embedded)}")


REQUIRED_FIGURES = (("forget", "uar"), ("forget", "accuracy"), ("membership", "auc"))


def check_consistency(receipt: dict) -> Check:
    ev = receipt["evaluation"]
    try:
        part = ev["unseen_part"]
        n = receipt["forget_set"]["n"]
        committed = len(receipt["forget_set"]["commitments"])
        figures = {(when, group, name): ev[when][group][name] for when in ("before", "after")
                   for group, name in (*REQUIRED_FIGURES, (part, "uar"), (part, "accuracy"))}
        kept = ev["unseen_uar_kept"]
    except (KeyError, TypeError):
        return Check("figures agree", False, "the evaluation section lacks figures every receipt has; it was edited")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in figures.values()):
        return Check("figures agree", False, "a figure of the evaluation section is not a number; it was edited")
    before, after = figures[("before", part, "uar")], figures[("after", part, "uar")]
    problems = []
    if before and (not isinstance(kept, (int, float)) or abs(after / before - kept) > 1e-9):
        problems.append(f"unseen UAR kept {kept!r} is not {after:.4f} / {before:.4f}")
    if committed != n or ev["after"]["forget"].get("n") != n:
        problems.append(f"n = {n}, but {committed} commitments and {ev['after']['forget'].get('n')} forget-set utterances evaluated")
    if problems:
        return Check("figures agree", False, "; ".join(problems))
    return Check("figures agree", True, f"{part} UAR {before:.3f} -> {after:.3f} ({after / before if before else 0:.1%} kept), n = {n}")


def check_model(receipt: dict, model_dir: Path) -> Check:
    from serkit.models.modeldir import file_hashes

    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return Check("model", False, f"{model_dir} holds no model.safetensors")
    digest = sha256_file(weights)
    expected = receipt["model_after"]["weights_sha256"]
    if digest != expected:
        return Check("model", False, f"weights {digest[:16]}… are not the receipt's model_after {expected[:16]}… "
                     "(another model, or changed since)")
    recorded = receipt["model_after"].get("files_sha256") or {}
    present = file_hashes(model_dir)
    changed = sorted(name for name in {*recorded, *present} if recorded.get(name) != present.get(name))
    if changed:
        return Check("model", False, f"the weights match, but {', '.join(changed[:3])} differ from the receipt's model "
                     "(a changed config changes what the model predicts)")
    try:
        record = (json.loads((model_dir / "config.json").read_text()).get("provenance") or {}).get("unlearning") or {}
    except (OSError, ValueError):
        record = {}
    if record.get("request_id") != receipt["request_id"]:
        return Check("model", False, "the files match, but the model's config.json does not name this request")
    return Check("model", True, f"every file is the receipt's model_after (weights {digest[:16]}…)")


def check_forget_set(receipt: dict, forget_files: list[str], keys: Path | str) -> Check:
    try:
        request = load_request_keys(keys).get(receipt["request_id"])
    except UnknownRequestError:
        return Check("forget set", False, f"the given keys {keys} hold no key for this request, so they cannot open its "
                     "commitments (a wrong key)")
    digests = [utterance_digest(f) for f in forget_files]
    missing, extra = compare(receipt["forget_set"]["commitments"], bytes.fromhex(request.key), digests)
    n = receipt["forget_set"]["n"]
    if missing or extra:
        return Check("forget set", False, f"the {len(forget_files)} given files are not the committed {n}: {missing} "
                     f"committed utterance(s) are not among them, {extra} given file(s) are not committed")
    return Check("forget set", True, f"the {len(forget_files)} given files are exactly the {n} committed utterances")


def check_figures(receipt: dict, model_dir: Path, forget_files: list[str], split, manifest, tolerance: float) -> list[Check]:
    from serkit.data.splits import split_parts_sha256
    from serkit.models.modeldir import load_model
    from serkit.unlearning.forget_set import build_forget_set, training_data

    saved = load_model(model_dir)
    data = training_data(saved, manifest, split)
    recorded = receipt["data"]
    if split_parts_sha256(data.parts) != recorded["split_parts_sha256"]:
        return [Check("data", False, f"split {split} is not the one the request was evaluated with (its speakers differ)")]
    data_check = Check("data", True, f"split {split} is the request's"
                       + ("" if data.manifest.sha256 == recorded["manifest_sha256"] else
                          "; its manifest changed since (SHA-256 differs), so the figures may differ"))
    forget_set = build_forget_set(saved, files=forget_files, strict=True, data=data, warn=lambda *a: None)
    from serkit.unlearning.evaluation import evaluation_sets, forget_report

    forget_eval, unseen, other = evaluation_sets(saved, data, forget_set, receipt["evaluation"]["unseen_part"])
    measured = forget_report(saved.model, forget_eval, unseen, other)
    claimed = receipt["evaluation"]["after"]
    off = []
    compared = 0
    for group, values in claimed.items():
        for name, value in values.items():
            if name in COMPARED and (group in measured or value is not None):
                compared += 1
                again = (measured.get(group) or {}).get(name)
                if again is not None and name == "accuracy" and group == "speaker_other_training":
                    again = round(again, 2)  # as the receipt holds it
                if again is None or not isinstance(value, (int, float)) or abs(again - value) > tolerance:
                    off.append(f"{group} {name} {value!r} in the receipt, "
                               + ("not measured" if again is None else f"{again:.4f} measured"))
    if not compared:
        return [data_check, Check("figures, re-evaluated", False, "the receipt holds no figures to compare")]
    if off:
        return [data_check, Check("figures, re-evaluated", False, f"{len(off)} of {compared} differ by more than "
                                  f"{tolerance:g}: " + "; ".join(off))]
    return [data_check, Check("figures, re-evaluated", True, f"{compared} of {compared} within {tolerance:g} of the receipt "
                              f"(forget-set UAR {measured['forget']['uar']:.3f}, {unseen.name} UAR "
                              f"{measured[unseen.name]['uar']:.3f}, membership AUC {measured['membership']['auc']:.2f})")]


def verify_chain(receipt_paths: list[Path | str], public_key: Path | str | None = None) -> list[Check]:
    if len(receipt_paths) < 2:
        raise SerkitError("--chain checks two or more receipts, oldest first: serkit receipt verify --chain R1 R2 ...")
    receipts = [read_receipt(p) for p in receipt_paths]
    names = [str(p) for p in receipt_paths]
    checks = [check_signature(r, public_key) for r in receipts]
    for check, name in zip(checks, names):
        check.name = f"signature of {name}"
    signers = {r["signature"].get("key_fingerprint") for r in receipts if r.get("signature")}
    if public_key is None and len(signers) > 1:  # one owner answers a model's requests: one key signs its chain
        checks.append(Check("one signer", False, f"the receipts are signed by {len(signers)} different keys "
                            f"({', '.join(sorted(signers))}); give the owner's key with --public-key"))
    first = receipts[0]["chain"]["index"]
    if first != 1:
        checks.append(Check("chain start", None, f"{names[0]} is request {first} of its lineage; the {first - 1} before it "
                            "are not checked"))
    for (a, name_a), (b, name_b) in zip(zip(receipts, names), zip(receipts[1:], names[1:])):
        problems = []
        if b["chain"]["index"] != a["chain"]["index"] + 1:
            problems.append(f"request {a['chain']['index']} is followed by request {b['chain']['index']}: "
                            f"{b['chain']['index'] - a['chain']['index'] - 1} request(s) missing between them"
                            if b["chain"]["index"] > a["chain"]["index"] else "out of order (give them oldest first)")
        if b["model_before"]["weights_sha256"] != a["model_after"]["weights_sha256"] or \
                b["model_before"].get("files_sha256") != a["model_after"].get("files_sha256"):
            problems.append(f"its model_before is not {name_a}'s model_after")
        if b["chain"].get("previous_receipt_sha256") != receipt_sha256(a):
            problems.append(f"it does not point at {name_a} (previous_receipt_sha256 differs: another or an edited receipt)")
        link = f"{name_a} -> {name_b}"
        checks.append(Check(link, not problems, "; ".join(problems) if problems else
                            f"request {a['chain']['index']} -> {b['chain']['index']}, model {b['model_before']['weights_sha256'][:12]}…"))
    return checks
