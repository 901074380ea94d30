"""The deletion receipt: what one request did, in a form others can check.

A receipt (receipt.json, format version 2) holds the hashes of the model before and after, the
forget set as hiding commitments (serkit.unlearning.commitments) and its size, the method and
every parameter, the seed, the figures before and after, the place of the request in its model's
chain of requests, and what is needed to re-run it (versions, device, threads). It names no speaker,
file or machine path. Its canonical form (JSON with sorted keys, no whitespace, the `signature`
field left out) is what the Ed25519 signature covers and what the next receipt of the chain
points at by SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch

import serkit
from serkit.errors import SerkitError
from serkit.unlearning.commitments import SCHEME

RECEIPT_FORMAT = "serkit-forget-receipt"
RECEIPT_VERSION = 2
RECEIPT_FILE = "receipt.json"


class ReceiptError(SerkitError):
    """A receipt is missing, of another format or version, or damaged."""


def canonical_bytes(receipt: dict) -> bytes:
    body = {k: v for k, v in receipt.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def receipt_sha256(receipt: dict) -> str:
    return hashlib.sha256(canonical_bytes(receipt)).hexdigest()


def read_receipt(path: Path | str) -> dict:
    path = Path(path)
    if path.is_dir() and (path / RECEIPT_FILE).is_file():
        path = path / RECEIPT_FILE
    if not path.is_file():
        raise ReceiptError(f"receipt {path} not found; give the receipt.json serkit forget wrote")
    try:
        receipt = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReceiptError(f"receipt {path} is not valid JSON ({getattr(exc, 'msg', exc)}); give the receipt.json "
                           "serkit forget wrote") from None
    except OSError as exc:
        raise ReceiptError(f"cannot read receipt {path} ({exc.strerror})") from None
    if not isinstance(receipt, dict) or receipt.get("format") != RECEIPT_FORMAT:
        raise ReceiptError(f"{path} is not a serkit forget receipt (no \"format\": \"{RECEIPT_FORMAT}\")")
    version = receipt.get("version")
    if version != RECEIPT_VERSION:
        older = isinstance(version, int) and version < RECEIPT_VERSION
        raise ReceiptError(f"receipt {path} has format version {version!r}; this serkit reads version {RECEIPT_VERSION}"
                           + (" (version 1 receipts hold unkeyed hashes and cannot be verified: answer the request "
                              "again with this serkit)" if older else " (made by a newer serkit: upgrade serkit)"))
    for key in ("request_id", "model_before", "model_after", "forget_set", "method", "evaluation", "chain"):
        if key not in receipt:
            raise ReceiptError(f"receipt {path} lacks '{key}'; it is damaged or was edited")
    return receipt


def environment(device: torch.device) -> dict:
    """What a bit-identical re-run needs to match; see docs/guides/deletion-requests.md for what may differ."""
    return {
        "serkit": serkit.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
        "cpu": _cpu_name(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_receipt(*, request_id: str, created_utc: str, model_before: dict, model_after: dict, n: int, commitments: list[str],
                  skipped_already_forgotten: int, method: dict, seed: int, data: dict, evaluation: dict, outcome: dict,
                  timing: dict, stats: dict, chain: dict, env: dict) -> dict:
    return {
        "format": RECEIPT_FORMAT,
        "version": RECEIPT_VERSION,
        "request_id": request_id,
        "created_utc": created_utc,
        "model_before": model_before,
        "model_after": {"path": "model", **model_after},
        "chain": chain,
        "forget_set": {"n": n, "commitment_scheme": SCHEME, "commitments": commitments,
                       "skipped_already_forgotten": skipped_already_forgotten},
        "method": {**method, "seed": seed},
        "data": data,
        "evaluation": evaluation,
        "outcome": outcome,
        "timing": timing,
        "stats": stats,
        "environment": env,
    }


def report_markdown(receipt: dict) -> str:
    """report.md: the receipt's figures for a person, with nothing the receipt does not already say."""
    ev = receipt["evaluation"]
    part = ev["unseen_part"]
    b, a = ev["before"], ev["after"]
    rows = [
        ("forget-set UAR", b["forget"]["uar"], a["forget"]["uar"]),
        ("forget-set accuracy", b["forget"]["accuracy"], a["forget"]["accuracy"]),
        (f"{part} UAR (unseen speakers)", b[part]["uar"], a[part]["uar"]),
        ("membership AUC (0.5 = looks unseen)", b["membership"]["auc"], a["membership"]["auc"]),
    ]
    if (b.get("speaker_other_training") or {}).get("accuracy") is not None:
        rows.append(("speaker's other training utterances, accuracy", b["speaker_other_training"]["accuracy"],
                     a["speaker_other_training"]["accuracy"]))
    if "vs_retrained" in a:
        rows.append(("agreement with the retrained model (unseen)", b["vs_retrained"]["agreement_unseen"],
                     a["vs_retrained"]["agreement_unseen"]))
    table = "\n".join(f"| {name} | {x:.3f} | {y:.3f} |" for name, x, y in rows)
    kept = ev["unseen_uar_kept"]
    timing, outcome, chain = receipt["timing"], receipt["outcome"], receipt["chain"]
    signed = receipt.get("signature")
    lines = [
        f"# Forget receipt: {receipt['forget_set']['n']} utterances, method `{receipt['method']['name']}`",
        f"Request {receipt['request_id'][:12]}…, created {receipt['created_utc']}; request {chain['index']} of this "
        f"model's lineage. Model before: `{receipt['model_before']['weights_sha256'][:16]}…`, after: "
        f"`{receipt['model_after']['weights_sha256'][:16]}…` (`model/`).",
        "| | before | after |\n|---|---|---|\n" + table,
        f"Unseen-speaker UAR kept: {kept:.1%}. Unlearning took {timing['unlearn_seconds']:.0f} s"
        + (f" ({timing['speedup_over_retraining']:.1f}x faster than retraining)" if "speedup_over_retraining" in timing else "") + ".",
        f"Reads remaining training data: {'yes' if receipt['method']['reads_remaining_data'] else 'no (forget set only)'}.",
    ]
    if receipt["data"].get("stop_reference"):
        lines.append(f"Its stop measured the forget set against {receipt['data']['stop_reference']}.")
    if outcome.get("target_reached") is False:
        if outcome.get("target_measure") == "membership_auc":
            against = "held-out utterances" if receipt["data"].get("stop_reference") else "the recorded profile"
            figure = (f"membership AUC {a['membership']['auc']:.2f} against the whole unseen part, goal "
                      f"{outcome['target_membership_auc']:.2f} against {against}")
        else:
            figure = f"forget-set accuracy {a['forget']['accuracy']:.2f}, goal {outcome['target_accuracy']:.2f}"
        lines.append(f"**The target was not reached**: {outcome['target']} ({figure}). The model may still "
                     "recognise the forget set as well as before.")
    stats = receipt["stats"]
    if "pgd" in stats:
        pgd = stats["pgd"]
        lines.append(f"PGD: {pgd['samples']} adversarial samples, target success {pgd['target_success_rate']:.0%}, "
                     f"median SNR {pgd['snr_db_median']:.1f} dB, {pgd['seconds']:.0f} s.")
    if "stop_reason" in stats:
        lines.append(f"Stopped: {stats['stop_reason']}.")
    lines.append("The forget set is identified only by keyed commitments; the key is in the owner's "
                 "`forget-keys.json`, not in anything meant to be shared. This report is not signed: the receipt is. "
                 + (f"Signed with Ed25519 key {signed['key_fingerprint']}." if signed else "Not signed.")
                 + " Check it with `serkit receipt verify receipt.json --model model`.")
    return "\n\n".join(lines) + "\n"
