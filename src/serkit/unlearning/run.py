"""`serkit forget`: one deletion request, end to end, with a receipt.

Reads the model and the forget set only (plus the evaluation data named below, which never
reaches the unlearning itself). Writes OUT/ whole or not at all: `model/` (a NEW model directory;
the input is never touched), `receipt.json` and `report.md`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import serkit
from serkit.data.dataset import load_waves
from serkit.data.manifest import Manifest, read_manifest
from serkit.errors import SerkitError
from serkit.io import sha256_file
from serkit.models.modeldir import SavedModel, load_model, save_model
from serkit.unlearning.evaluation import EvalSet, forget_report
from serkit.unlearning.forget_set import ForgetSet, build_forget_set, training_data
from serkit.unlearning.methods import UnlearnContext, get_method

RECEIPT_FORMAT = "serkit-forget-receipt"


@dataclass
class ForgetResult:
    out_dir: Path
    model_dir: Path
    receipt: dict


def _label_indices(saved: SavedModel, frame) -> np.ndarray:
    index = {label: i for i, label in enumerate(saved.labels)}
    return np.array([index[e] for e in frame["emotion"]], dtype=np.int64)


def _eval_set(saved: SavedModel, name: str, manifest: Manifest) -> EvalSet:
    manifest.check_labels(saved.labels, f"model {saved.path}")
    return EvalSet(name, load_waves(manifest.audio_paths(), saved.preprocessing), _label_indices(saved, manifest.frame))


def check_output(out: Path, model_dir: Path, overwrite: bool) -> None:
    out_r, model_r = out.resolve(), model_dir.resolve()
    if out_r == model_r or out_r in model_r.parents or model_r in out_r.parents:
        raise SerkitError(f"output {out} would overwrite or sit inside the input model {model_dir}; choose another -o")
    if out.exists() and not overwrite:
        raise SerkitError(f"output {out} already exists; choose another -o, or pass --overwrite to replace it")


def forget(model_dir: Path | str, out: Path | str, *, files: list[str] | None = None, speaker: str | None = None,
           n: int | None = None, seed: int = 0, method: str = "adv-ewc", params: dict | None = None,
           eval_part: str | None = None, manifest: Path | str | None = None, remain: Path | str | None = None,
           strict: bool = False, overwrite: bool = False, retrained: Path | str | None = None, device: str = "auto",
           log=print) -> ForgetResult:
    model_dir, out = Path(model_dir), Path(out)
    check_output(out, model_dir, overwrite)
    device = resolve_device(device)
    unlearner = get_method(method, params)
    original = load_model(model_dir)
    original.model.to(device)
    forget_set = build_forget_set(original, files=files, speaker=speaker, n=n, seed=seed, manifest=manifest,
                                  strict=strict, warn=log)
    data = training_data(original, manifest)
    if eval_part is None:
        eval_part = "val" if data.held_out.get("val") else "test"
    unseen_speakers = data.held_out.get(eval_part)
    if not unseen_speakers:
        raise SerkitError(f"the model has no '{eval_part}' speakers it never trained on to evaluate against "
                          f"(held out: {sorted(k for k, v in data.held_out.items() if v)})")
    frame = data.manifest.frame
    forget_eval = EvalSet("forget", load_waves(forget_set.audio_paths(), original.preprocessing),
                          _label_indices(original, forget_set.rows))
    unseen = _eval_set(original, eval_part, data.manifest.subset(unseen_speakers))
    others = frame[frame["speaker"].isin(forget_set.speakers) & ~frame["path"].isin(set(forget_set.rows["path"]))]
    other = _eval_set(original, "speaker_other_training", Manifest(others.reset_index(drop=True), data.manifest.file)) \
        if len(others) else None
    reference = load_model(retrained) if retrained else None
    if reference is not None:
        reference.model.to(device)
    log(f"forgetting {len(forget_set)} utterances ({forget_set.mode}) of speaker(s) {', '.join(forget_set.speakers)} "
        f"with '{unlearner.name}'; evaluating on {len(unseen)} {eval_part} utterances")
    before = forget_report(original.model, forget_eval, unseen, other, reference.model if reference else None)

    working = load_model(model_dir)  # the copy that changes; `original` stays as loaded
    working.model.to(device)
    remain_manifest = None
    if unlearner.reads_remaining_data and method == "remain":
        remain_manifest = read_manifest(remain) if remain else None
        if remain_manifest is not None:
            remain_manifest = remain_manifest.subset(data.trained_speakers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        ctx = UnlearnContext(working, forget_set, forget_eval.waves, forget_eval.labels, seed, log,
                             reference_accuracy=_reference_accuracy(original), remain=remain_manifest, work_dir=tmp / "work",
                             device=str(device))
        start = time.perf_counter()
        outcome = unlearner.unlearn(ctx)
        seconds = time.perf_counter() - start
        result_model = outcome.replacement or working
        after = forget_report(result_model.model, forget_eval, unseen, other, reference.model if reference else None)
        receipt = _receipt(original, forget_set, unlearner, outcome.stats, before, after, eval_part, seconds, reference)
        receipt["timing"]["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        provenance = dict(original.config.get("provenance") or {})
        provenance["unlearning"] = {"from_weights_sha256": original.weights_sha256, "method": unlearner.name,
                                    "params": unlearner.params.model_dump(mode="json"), "forget_set": forget_set.describe(),
                                    "utterances_sha256": forget_set.hashed_ids(), "created_utc": receipt["created_utc"]}
        provenance["unlearning_history"] = list(provenance.get("unlearning_history", [])) + [provenance["unlearning"]]
        save_model(tmp / "model", result_model.model.cpu(), original.labels, original.preprocessing, provenance)
        receipt["model_after"] = {"path": "model", "weights_sha256": sha256_file(tmp / "model" / "model.safetensors")}
        shutil.rmtree(tmp / "work", ignore_errors=True)
        (tmp / "receipt.json").write_text(json.dumps(receipt, indent=2) + "\n")
        (tmp / "report.md").write_text(_report(receipt))
        os.chmod(tmp, 0o755)
        if out.exists():  # --overwrite: swap in the new result, then drop the old one
            trash = out.with_name(f".{out.name}.old")
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ForgetResult(out, out / "model", receipt)


def resolve_device(device: str) -> torch.device:
    """'auto' is the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise SerkitError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SerkitError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise SerkitError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0..)")
    if resolved.type not in ("cpu", "cuda"):
        raise SerkitError(f"--device {device}: serkit forget runs on cpu or cuda")
    return resolved


def _reference_accuracy(saved: SavedModel) -> float | None:
    training = (saved.config.get("provenance") or {}).get("training") or {}
    value = training.get("best_val_accuracy", training.get("best_val_uar"))
    return float(value) if value is not None else None


def _receipt(original, forget_set: ForgetSet, unlearner, stats, before, after, eval_part, seconds, reference) -> dict:
    kept = after[eval_part]["uar"] / before[eval_part]["uar"] if before[eval_part]["uar"] else None
    timing = {"unlearn_seconds": round(seconds, 2)}
    if reference is not None:
        retrain_s = ((reference.config.get("provenance") or {}).get("training") or {}).get("train_seconds")
        if retrain_s:
            timing["retrain_seconds"] = retrain_s
            timing["speedup_over_retraining"] = round(retrain_s / seconds, 2)
    return {
        "format": RECEIPT_FORMAT,
        "version": 1,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "serkit_version": serkit.__version__,
        "model_before": {"path": str(original.path.resolve()), "weights_sha256": original.weights_sha256},
        "forget_set": {**forget_set.describe(), "utterances_sha256": forget_set.hashed_ids()},
        "method": {"name": unlearner.name, "params": unlearner.params.model_dump(mode="json"),
                   "reads_remaining_data": unlearner.reads_remaining_data},
        "evaluation": {"unseen_part": eval_part, "before": before, "after": after, "unseen_uar_kept": kept},
        "timing": timing,
        "stats": stats,
    }


def _report(receipt: dict) -> str:
    ev = receipt["evaluation"]
    part = ev["unseen_part"]
    b, a = ev["before"], ev["after"]
    rows = [
        ("forget-set UAR", b["forget"]["uar"], a["forget"]["uar"]),
        ("forget-set accuracy", b["forget"]["accuracy"], a["forget"]["accuracy"]),
        (f"{part} UAR (unseen speakers)", b[part]["uar"], a[part]["uar"]),
        ("membership AUC (0.5 = looks unseen)", b["membership"]["auc"], a["membership"]["auc"]),
    ]
    if "speaker_other_training" in b:
        rows.append(("speaker's other training utterances, accuracy", b["speaker_other_training"]["accuracy"],
                     a["speaker_other_training"]["accuracy"]))
    if "vs_retrained" in a:
        rows.append(("agreement with the retrained model (unseen)", b["vs_retrained"]["agreement_unseen"],
                     a["vs_retrained"]["agreement_unseen"]))
    table = "\n".join(f"| {name} | {x:.3f} | {y:.3f} |" for name, x, y in rows)
    kept = ev["unseen_uar_kept"]
    timing = receipt["timing"]
    lines = [
        f"# Forget receipt: {receipt['forget_set']['n']} utterances, method `{receipt['method']['name']}`",
        f"Created {receipt['created_utc']}. Model before: `{receipt['model_before']['weights_sha256'][:16]}…`, "
        f"after: `{receipt['model_after']['weights_sha256'][:16]}…` (`model/`).",
        "| | before | after |\n|---|---|---|\n" + table,
        f"Unseen-speaker UAR kept: {kept:.1%}. Unlearning took {timing['unlearn_seconds']:.0f} s"
        + (f" ({timing['speedup_over_retraining']:.1f}x faster than retraining)" if "speedup_over_retraining" in timing else "") + ".",
        f"Reads remaining training data: {'yes' if receipt['method']['reads_remaining_data'] else 'no (forget set only)'}.",
    ]
    stats = receipt["stats"]
    if "pgd" in stats:
        pgd = stats["pgd"]
        lines.append(f"PGD: {pgd['samples']} adversarial samples, target success {pgd['target_success_rate']:.0%}, "
                     f"median SNR {pgd['snr_db_median']:.1f} dB, {pgd['seconds']:.0f} s.")
    if "stop_reason" in stats:
        lines.append(f"Stopped: {stats['stop_reason']}.")
    return "\n\n".join(lines) + "\n"
