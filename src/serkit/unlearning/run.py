"""`serkit forget`: one deletion request, end to end, with a receipt.

Reads the model and the forget set only (plus the evaluation data named below, which never
reaches the unlearning itself, and with stop_reference held-out the held-out calibration utterances
of the model's other training speakers, which its stop measures against). Writes OUT/ whole or not at all, and never while another run
writes it: `model/` (a NEW model directory that says N utterances were forgotten, never which;
the input is never touched), `receipt.json` (signed with `sign_key`), `report.md`, and
`forget-keys.json`, the owner's secret (mode 0600; elsewhere with `keys_out`), and after a pgu request,
beside it and as private, `forget-keys.moments.safetensors`: the retained head moments the next request reads.

A model that was forgotten before is the input of the next request: its request keys (the
previous request's forget-keys.json) let this request refuse utterances already forgotten and
chain its receipt to the previous one. The same request on the same machine gives the same
model, bit for bit (serkit.determinism); `reproduce` re-runs one from its receipt.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from serkit.data.manifest import read_manifest
from serkit.data.splits import split_parts_sha256
from serkit.determinism import reproducible
from serkit.errors import ConfigError, SerkitError
from serkit.io import OutputDir, refuse_existing, sha256_file, write_text
from serkit.models.modeldir import SavedModel, file_hashes, load_model, save_model
from serkit.unlearning.commitments import commitments, new_key
from serkit.unlearning.evaluation import evaluation_sets, forget_report, held_out_reference
from serkit.unlearning.forget_set import ForgetSet, TrainingData, build_forget_set, training_data
from serkit.unlearning.importance import (
    head_layers,
    head_moments,
    load_moments,
    moments_source,
    retained_moments_file,
    safetensors_header,
    save_retained_moments,
)
from serkit.unlearning.keys import KEYS_FILE, RequestKey, RequestKeys, load_request_keys, load_signing_key, sign
from serkit.unlearning.methods import METHODS, UnlearnContext, get_method, method_class
from serkit.unlearning.receipts import (
    RECEIPT_FILE,
    RECEIPT_FORMAT,
    build_receipt,
    canonical_bytes,
    environment,
    read_receipt,
    receipt_sha256,
    report_markdown,
)
from serkit.unlearning.redaction import find_traces, identifiers_of, private_training_provenance
from serkit.unlearning.stopping import stop_rule


@dataclass
class ForgetResult:
    out_dir: Path
    model_dir: Path
    receipt: dict
    keys_file: Path


@dataclass
class Replay:
    """What `reproduce` fixes from a receipt: the same key, the same commitments, the same threads."""

    key: bytes
    commitments: list[str]
    threads: int | None
    keys_before: RequestKeys


def is_forget_output(path: Path) -> bool:
    """An output of serkit forget (what --overwrite may replace): a folder with a forget receipt."""
    try:
        return json.loads((path / RECEIPT_FILE).read_text()).get("format") == RECEIPT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


DEFAULT_METHOD, FALLBACK_METHOD = "pgu", "adv-ewc"  # bench/RESULTS.md 23k


def keys_files(model_dir: Path, keys: Path | str | None) -> list[Path]:
    """Where the keys of the request that made a model may be: the file named, and the one its request wrote beside
    it (a later request's keys file also opens earlier requests, but the moments beside it are another model's)."""
    beside = Path(model_dir).parent / KEYS_FILE
    return [Path(keys), beside] if keys and Path(keys) != beside else [beside]


def default_method(model_dir: Path, keys: Path | str | None = None) -> tuple[str, str | None]:
    """The method a request runs when none is named, and why (None where there is no model to say it of: loading it
    names what is wrong): pgu where head moments of the model's own weights exist (serkit train stores them; a
    request that moved only the head leaves the retained ones beside its keys), adv-ewc, the papers' method, where
    they do not."""
    from serkit.models.modeldir import CONFIG, IMPORTANCES
    from serkit.unlearning.importance import moments_source

    if not (Path(model_dir) / CONFIG).is_file():
        return FALLBACK_METHOD, None
    found = moments_source(model_dir, keys_files(model_dir, keys))
    if found is not None and found[0] == "stored":
        return DEFAULT_METHOD, ("the default for a model that stores its training head moments (bench/RESULTS.md "
                                "23k)")
    if found is not None:
        return DEFAULT_METHOD, (f"the default: the head moments of the training utterances this model still holds, "
                                f"which the request that made it left beside its keys ({found[1]})")
    try:
        answered = bool((json.loads((Path(model_dir) / "config.json").read_text()).get("provenance") or {})
                        .get("unlearning_history"))
    except (OSError, ValueError, AttributeError):
        answered = False  # loading the model says what is wrong with it
    if answered:
        looked = " or ".join(str(retained_moments_file(k)) for k in keys_files(model_dir, keys))
        return FALLBACK_METHOD, (f"the default for the output of an earlier request that left no head moments for it "
                                 f"({looked}: a pgu request leaves them beside its keys; name its keys file with --key)")
    overwrite = " --overwrite" if (Path(model_dir) / IMPORTANCES).exists() else ""
    return FALLBACK_METHOD, ("the default for a model without its training head moments (trained before serkit "
                             "stored them); pgu, which keeps more of the model, needs `serkit models importances "
                             f"{model_dir}{overwrite}` while the training data still exists")


def check_output(out: Path, model_dir: Path) -> None:
    out_r, model_r = out.resolve(), model_dir.resolve()
    if out_r == model_r or out_r in model_r.parents or model_r in out_r.parents:
        raise SerkitError(f"output {out} would overwrite or sit inside the input model {model_dir}; choose another -o")


def forget(model_dir: Path | str, out: Path | str, *, files: list[str] | None = None, speaker: str | None = None,
           n: int | None = None, seed: int = 0, method: str | None = None, params: dict | None = None,
           eval_part: str | None = None, manifest: Path | str | None = None, split: Path | str | None = None,
           remain: Path | str | None = None, strict: bool = False, overwrite: bool = False,
           retrained: Path | str | None = None, device: str = "auto", keys: Path | str | None = None,
           keys_out: Path | str | None = None, sign_key: Path | str | None = None, skip_forgotten: bool = False,
           require_target: bool = False, log=print, replay: Replay | None = None,
           deterministic: bool = True, progress=None) -> ForgetResult:
    """Answer one deletion request; see the module's docstring. `deterministic=False` lets PyTorch choose
    its fastest kernels (bench/determinism_benchmark.py measures what bit-identity costs). `progress(label)`,
    a context giving `update(done, total)`, reports the long steps (the command line's bar)."""
    model_dir, out = Path(model_dir), Path(out)
    check_output(out, model_dir)
    for private in (KEYS_FILE, retained_moments_file(KEYS_FILE).name):
        if overwrite and (out / private).is_file():
            raise SerkitError(f"{out} holds {private}, private to the model's owner ({KEYS_FILE}: the only key to its "
                              "request's commitments; the moments: what the next pgu request reads), which --overwrite "
                              f"would destroy: move {KEYS_FILE} and any {retained_moments_file(KEYS_FILE).name} somewhere "
                              "safe first, together (or choose another -o)")
    signer = load_signing_key(sign_key) if sign_key else None
    keys_out = Path(keys_out) if keys_out else None
    if keys_out is not None:
        refuse_existing(keys_out, "keys file")
        refuse_existing(retained_moments_file(keys_out), "retained moments file (it goes beside the keys)")
        if out.resolve() in keys_out.resolve().parents:
            raise SerkitError(f"--key-out {keys_out} lies inside the output {out}; it exists to keep the key apart from "
                              "the output: choose a path outside it")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any CUDA work, or cuBLAS ignores it
    device = resolve_device(device)
    chosen = method is None
    if chosen:
        method, why = default_method(model_dir, keys)
        if why is not None:
            log(f"method {method}: {why}")
    try:
        unlearner = get_method(method, params)
    except ConfigError as err:
        # the hint only where the default method does not know a parameter; a bad value for one it knows is just that
        foreign = chosen and bool(set(params or {}) - set(METHODS[method].Params.model_fields))
        raise ConfigError(f"{err} ({method} is the default method for this model: name the one these parameters "
                          "are for with --method)" if foreign else str(err)) from None
    with OutputDir(out, overwrite, recognise=is_forget_output) as output:
        original = load_model(model_dir)
        profiles = getattr(unlearner.params, "profiles", None) or (original.config.get("provenance") or {}).get("calibration")
        lineage = replay.keys_before if replay else lineage_keys(original, model_dir, keys, log)
        data = training_data(original, manifest, split)
        forget_set, digests, skipped = _forget_set(original, data, lineage, files, speaker, n, seed, strict,
                                                   skip_forgotten, log)
        held_out = None
        if getattr(unlearner.params, "stop_reference", "stored") == "held-out":
            held_out = held_out_reference(original, data, forget_set)
        if getattr(unlearner.params, "target", None) is not None:  # a stop the model cannot serve: refused before PGD
            stop_rule(unlearner.params.target, getattr(unlearner.params, "target_accuracy", None), profiles,
                      _reference_accuracy(original), unlearner.params._preset_target, log=lambda *a: None,
                      reference=held_out, target_membership_auc=getattr(unlearner.params, "target_membership_auc", None),
                      share_power=getattr(unlearner.params, "share_power", None),
                      share_power_chosen=getattr(unlearner.params, "_share_power_chosen", False))
        key = replay.key if replay else new_key()
        committed = commitments(key, digests)
        if replay and committed != replay.commitments:
            raise SerkitError("the forget set named here is not the one the receipt commits to (its commitments differ); "
                              "name it as the original request did (--speaker/--n, or the same --forget list)")
        if eval_part is None:
            eval_part = "val" if data.held_out.get("val") else "test"
        forget_eval, unseen, other = evaluation_sets(original, data, forget_set, eval_part)
        reference = load_model(retrained) if retrained else None
        if reference is not None:
            reference.model.to(device)
        original.model.to(device)
        log(f"forgetting {len(forget_set)} utterances ({forget_set.mode}) of speaker(s) {', '.join(forget_set.speakers)} "
            f"with '{unlearner.name}'; evaluating on {len(unseen)} {eval_part} utterances")
        remain_manifest = None
        if unlearner.reads_remaining_data and method == "remain":
            remain_manifest = read_manifest(remain) if remain else None
            if remain_manifest is not None:
                remain_manifest = remain_manifest.subset(data.trained_speakers)
        staging = output.staging()
        moments = moments_source(model_dir, keys_files(model_dir, keys))
        if unlearner.name == "pgu" and moments is None and len(lineage):
            looked = " or ".join(str(retained_moments_file(k)) for k in keys_files(model_dir, keys))
            raise SerkitError(f"model {model_dir} answered a deletion request and no head moments of its weights are "
                              f"at {looked}: only a pgu request leaves them (beside its keys); give that request's "
                              "keys file with --key, or name another method")
        with reproducible(seed, replay.threads if replay else None, deterministic) as determinism:
            env = environment(device)
            before = forget_report(original.model, forget_eval, unseen, other, reference.model if reference else None)
            working = load_model(model_dir)  # the copy that changes; `original` stays as loaded
            working.model.to(device)
            ctx = UnlearnContext(working, forget_set, forget_eval.waves, forget_eval.labels, seed, log,
                                 reference_accuracy=_reference_accuracy(original), remain=remain_manifest,
                                 profiles=profiles, work_dir=staging / "work", device=str(device), data=data,
                                 progress=progress, stop_reference=held_out,
                                 forget_share=data.forget_share(forget_set),
                                 retained_moments=moments[1] if moments and moments[0] == "retained" else None)
            start = time.perf_counter()
            outcome = unlearner.unlearn(ctx)
            seconds = time.perf_counter() - start
            result_model = outcome.replacement or working
            _refuse_diverged(result_model.model, unlearner)
            after = forget_report(result_model.model, forget_eval, unseen, other, reference.model if reference else None)
            retained = _retained_moments(original, moments, forget_eval.waves) \
                if unlearner.name == "pgu" else None
        env["nondeterministic_ops"] = sorted(set(determinism.nondeterministic_ops))
        if env["nondeterministic_ops"]:
            log(f"note: {len(env['nondeterministic_ops'])} operation(s) ran without a deterministic implementation "
                f"({env['nondeterministic_ops'][0]}); a re-run may differ in the last bits")
        stats = outcome.stats
        reached = _check_target(stats, after, require_target, log)
        request_id, created = uuid.uuid4().hex, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        index = len(lineage) + 1
        record = {"request_id": request_id, "index": index, "from_weights_sha256": original.weights_sha256,
                  "method": unlearner.name, "params": unlearner.params.model_dump(mode="json"), "n": len(forget_set),
                  "created_utc": created}
        shutil.rmtree(staging / "work", ignore_errors=True)
        save_model(staging / "model", result_model.model.cpu(), original.labels, original.preprocessing,
                   _forgotten_provenance(original, record), task=original.task)
        receipt = build_receipt(
            request_id=request_id, created_utc=created, model_before=_model_record(model_dir),
            model_after=_model_record(staging / "model"), n=len(forget_set), commitments=committed,
            skipped_already_forgotten=skipped,
            method={"name": unlearner.name, "params": unlearner.params.model_dump(mode="json"),
                    "reads_remaining_data": unlearner.reads_remaining_data},
            seed=seed,
            data={"manifest_sha256": data.manifest.sha256, "split_parts_sha256": split_parts_sha256(data.parts),
                  "unseen_part": eval_part, "n_unseen": len(unseen),
                  # how many is left out: with a corpus' per-speaker counts it would say how many speakers were forgotten
                  **({} if held_out is None else {"stop_reference": "held-out utterances of the model's other training "
                                                  "speakers (data.calibration), read at request time"})},
            evaluation=_shareable_evaluation(before, after, eval_part),
            outcome={"target": stats.get("target"), "target_accuracy": stats.get("target_accuracy"),
                     **({k: stats[k] for k in ("target_measure", "target_membership_auc") if k in stats}),
                     "target_reached": reached, "stop_reason": stats.get("stop_reason")},
            timing=_timing(seconds, reference), stats=stats,
            chain={"index": index, "previous_receipt_sha256": lineage.requests[-1].receipt_sha256 if len(lineage) else None},
            env=env)
        if signer is not None:
            receipt["signature"] = sign(signer, canonical_bytes(receipt))
        write_text(staging / RECEIPT_FILE, json.dumps(receipt, indent=2) + "\n")
        write_text(staging / "report.md", report_markdown(receipt))
        request_key = RequestKey(request_id, index, key.hex(), committed, original.weights_sha256,
                                 receipt["model_after"]["weights_sha256"], receipt_sha256(receipt), receipt["created_utc"])
        lineage.with_request(request_key).save(keys_out or staging / KEYS_FILE)
        written = None
        try:
            if retained is not None:
                written = save_retained_moments(retained_moments_file(keys_out or staging / KEYS_FILE), retained[0],
                                                receipt["model_after"]["weights_sha256"], retained[1])
            _refuse_traces(staging, forget_set)
            output.commit()
        except BaseException:
            if keys_out is not None:
                keys_out.unlink(missing_ok=True)
                if written is not None:
                    written.unlink(missing_ok=True)
            raise
    return ForgetResult(out, out / "model", receipt, keys_out or out / KEYS_FILE)


def _refuse_diverged(model, unlearner) -> None:
    """A method that blew up leaves weights no model should carry; say so rather than fail on them later."""
    bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        lr = getattr(unlearner.params, "lr", None)
        raise SerkitError(f"method '{unlearner.name}' diverged: the unlearned model's weights are not finite (first in "
                          f"{bad}); nothing was written. Lower its learning rate (--set lr=..."
                          + (f", now {lr:g}" if lr else "") + ")")


def _check_target(stats: dict, after: dict, require_target: bool, log) -> bool | None:
    """Whether the stop's target was reached (None: the method has none); a miss is said, or refused."""
    reached = stats.get("target_reached")
    if reached is False:
        if stats.get("target_measure") == "membership_auc":
            figure = f"its membership AUC did not fall to the target {stats['target_membership_auc']:.2f}"
        else:
            figure = (f"forget-set accuracy {after['forget']['accuracy']:.2f} did not reach the target "
                      f"{stats.get('target_accuracy', 0):.2f}")
        message = f"the forget set is still recognised: {figure} ({stats.get('stop_reason')})"
        if require_target:
            raise SerkitError(f"{message}; nothing was written (--require-target). Raise epochs or lr, or try "
                              "another method")
        log(f"warning: {message}; the receipt says so (pass --require-target to refuse such a result)")
    return reached


def _forgotten_provenance(original: SavedModel, record: dict) -> dict:
    """The input's training provenance made private, with this request added to its deletion history."""
    provenance = original.config.get("provenance") or {}
    private = private_training_provenance(provenance)
    private["unlearning"] = record
    private["unlearning_history"] = list(provenance.get("unlearning_history") or []) + [record]
    return private


def _model_record(model_dir: Path) -> dict:
    return {"weights_sha256": sha256_file(model_dir / "model.safetensors"), "files_sha256": file_hashes(model_dir)}


def lineage_keys(original: SavedModel, model_dir: Path, keys: Path | str | None, log) -> RequestKeys:
    """The request keys of every earlier deletion in the model's lineage (none for a trained model)."""
    history = (original.config.get("provenance") or {}).get("unlearning_history") or []
    beside = model_dir.parent / KEYS_FILE
    if keys is not None:
        found = load_request_keys(keys).up_to(original.weights_sha256)  # a later request's file holds ours too
    elif history and beside.is_file():
        found = load_request_keys(beside)
        log(f"earlier deletion requests of this model: {len(found)} (request keys {beside})")
    elif history:
        raise SerkitError(f"model {model_dir} has answered {len(history)} deletion request(s) before; give the {KEYS_FILE} "
                          "written with the last of them (--key FILE), so that utterances already forgotten are refused "
                          "and this receipt chains to the last one")
    else:
        found = RequestKeys()
    if len(found) != len(history) or (len(found) and found.requests[-1].model_after != original.weights_sha256):
        made = found.requests[-1].model_after[:12] + "…" if len(found) else "no model"
        raise SerkitError(f"request keys {found.file} are not this model's: they cover {len(found)} request(s) ending with "
                          f"{made}, but model {model_dir} ({original.weights_sha256[:12]}…) has answered {len(history)}; give "
                          f"the {KEYS_FILE} written with the request that made this model")
    return found


def _forget_set(original, data: TrainingData, lineage: RequestKeys, files, speaker, n, seed, strict, skip_forgotten,
                log) -> tuple[ForgetSet, list[bytes], int]:
    """The forget set with its content digests, less what earlier requests forgot (refused unless skipped)."""
    already = (lambda d: lineage.forgotten_by(d) is not None) if len(lineage) else None
    forget_set = build_forget_set(original, files=files, speaker=speaker, n=n, seed=seed, strict=strict, warn=log,
                                  data=data, forgotten=already)
    digests = forget_set.digests()
    if len(set(digests)) < len(digests):
        first = next(i for i, d in enumerate(digests) if digests.index(d) != i)
        twin = digests.index(digests[first])
        rows = forget_set.rows["path"]
        raise SerkitError(f"the forget set holds the same audio twice: manifest rows {rows.iloc[twin]} and "
                          f"{rows.iloc[first]} are identical files; drop the duplicate row from the manifest")
    earlier = [(i, lineage.forgotten_by(d)) for i, d in enumerate(digests)] if len(lineage) else []
    earlier = [(i, r) for i, r in earlier if r is not None]
    if not earlier:
        return forget_set, digests, 0
    by = ", ".join(str(r) for r in sorted({r.index for _, r in earlier}))
    if not skip_forgotten:
        raise SerkitError(f"{len(earlier)} of the {len(forget_set)} utterances were already forgotten (by request {by} of "
                          "this model's lineage); leave them out, or pass --skip-forgotten")
    drop = {i for i, _ in earlier}
    if len(drop) == len(forget_set):
        raise SerkitError(f"all {len(forget_set)} utterances were already forgotten (by request {by}); nothing to do")
    for i in sorted(drop):
        log(f"skipped, already forgotten by request {dict(earlier)[i].index}: {forget_set.rows['path'].iloc[i]}")
    keep = [i for i in range(len(forget_set)) if i not in drop]
    rows = forget_set.rows.iloc[keep].reset_index(drop=True)
    kept = ForgetSet(rows, forget_set.manifest, forget_set.mode, forget_set.seed, forget_set.skipped)
    return kept, [digests[i] for i in keep], len(drop)


def _shareable_evaluation(before: dict, after: dict, part: str) -> dict:
    """The figures, with less said about the forgotten speaker's other training utterances: with a corpus'
    speaker sizes and N, their count could name the speaker, so it is left out, their accuracy is rounded to
    two decimals (k/m in full precision gives m back), and the entry is always there (None when the whole
    speaker was forgotten: its absence would say so)."""
    def clean(report):
        report = copy.deepcopy(report)
        other = report.pop("speaker_other_training", None)
        report["speaker_other_training"] = {"accuracy": None if other is None else round(other["accuracy"], 2)}
        return report

    b, a = clean(before), clean(after)
    kept = a[part]["uar"] / b[part]["uar"] if b[part]["uar"] else None
    return {"unseen_part": part, "before": b, "after": a, "unseen_uar_kept": kept}


def _retained_moments(original: SavedModel, source: tuple[str, Path] | None, forget_waves) -> tuple[dict, int] | None:
    """The head moments of the training utterances the new model still holds after a pgu request (the ones read,
    less the forget set's), and their number. pgu moves the head's linear weights alone, so the inputs of the
    head's first layer are what they were and its moments stay exact; the second layer's are approximate (the first
    layer moved, off the directions that hold retained_var of the retained inputs). None where the moments read do
    not say how many utterances they sum over."""
    count = (safetensors_header(source[1]) or ({}, []))[0].get("n_utterances") if source is not None else None
    if not count:
        return None
    layers = head_layers(original.model)
    stored = load_moments(original, retained=source[1] if source[0] == "retained" else None)
    forgotten = head_moments(original.model, forget_waves)
    return {name: stored[name].double() - forgotten[name] for name in layers}, max(int(count) - len(forget_waves), 0)


def _refuse_traces(staging: Path, forget_set: ForgetSet) -> None:
    """A last check before anything appears: the forget set's names, and their hashes, are nowhere in the output."""
    paths = [str(p) for p in forget_set.rows["path"]] + [str(p) for p in forget_set.audio_paths()]
    names = identifiers_of(forget_set.speakers, paths)
    distinctive = [x for x in names if len(x) >= 8]  # a speaker "05" or a file "a.wav" also occurs as a word
    traces = find_traces(staging, distinctive) + find_traces(staging, names, raw=False)
    if traces:
        raise SerkitError(f"serkit bug: the output would reveal the forget set ({traces[0]}); nothing was written. "
                          "Please report it")


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


def _timing(seconds: float, reference) -> dict:
    timing = {"unlearn_seconds": round(seconds, 2)}
    if reference is not None:
        retrain_s = ((reference.config.get("provenance") or {}).get("training") or {}).get("train_seconds")
        if retrain_s:
            timing["retrain_seconds"] = retrain_s
            timing["speedup_over_retraining"] = round(retrain_s / seconds, 2)
    return timing


@dataclass
class Reproduction:
    identical: bool
    lines: list[str]
    receipt: dict


def reproduce(model_dir: Path | str, receipt_path: Path | str, *, files: list[str] | None = None,
              speaker: str | None = None, n: int | None = None, keys: Path | str | None = None,
              manifest: Path | str | None = None, split: Path | str | None = None, remain: Path | str | None = None,
              strict: bool = False, out: Path | str | None = None, device: str = "auto", log=print,
              progress=None) -> Reproduction:
    """Re-run the request a receipt describes and say whether the result is identical.

    The method, parameters, seed, evaluation part and thread count come from the receipt; the forget
    set is named again (as the original request named it) and must match the receipt's commitments
    under its key (`keys`: the request's forget-keys.json, by default the one beside the receipt). The
    comparison with a retrained model (`--retrained`) is not re-run."""
    receipt = read_receipt(receipt_path)
    if (files is None) == (speaker is None):
        raise SerkitError("--reproduce needs the forget set named as the original request named it: --speaker ID "
                          "(with --n N), or --forget FILES.txt; the receipt holds only commitments to it")
    receipt_path = Path(receipt_path)
    folder = receipt_path if receipt_path.is_dir() else receipt_path.parent
    keys = Path(keys) if keys else folder / KEYS_FILE
    request_keys = load_request_keys(keys)
    request = request_keys.get(receipt["request_id"])
    original = load_model(model_dir)
    if original.weights_sha256 != receipt["model_before"]["weights_sha256"]:
        raise SerkitError(f"model {model_dir} is not the receipt's model_before (weights {original.weights_sha256[:12]}…, "
                          f"the receipt: {receipt['model_before']['weights_sha256'][:12]}…); give the model the request was "
                          "made on")
    mine, theirs = environment(resolve_device(device)), receipt.get("environment") or {}
    differs = [k for k in ("serkit", "torch", "numpy", "python", "platform", "cpu", "device") if mine.get(k) != theirs.get(k)]
    if differs:
        log(f"warning: this machine differs from the receipt's in {', '.join(f'{k} ({theirs.get(k)} there, {mine.get(k)} here)' for k in differs)}; "
            "a bit-identical result is not expected, the figures should be close")
    method = receipt["method"]
    params = dict(method["params"])
    if "share_power" not in params and "share_power" in method_class(method["name"]).Params.model_fields:
        params["share_power"] = None  # a receipt from before share_power: its goal stayed put
    replay = Replay(bytes.fromhex(request.key), receipt["forget_set"]["commitments"], theirs.get("threads"),
                    request_keys.before(request.index))
    temporary = None
    if out is None:
        temporary = Path(tempfile.mkdtemp(prefix="serkit-reproduce-"))
        out = temporary / "run"
    try:
        result = forget(model_dir, out, files=files, speaker=speaker, n=n, seed=method["seed"], method=method["name"],
                        params=params, eval_part=receipt["evaluation"]["unseen_part"], manifest=manifest,
                        split=split, remain=remain, strict=strict, device=device,
                        skip_forgotten=receipt["forget_set"]["skipped_already_forgotten"] > 0, log=log, replay=replay,
                        deterministic=theirs.get("deterministic_algorithms", True), progress=progress)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    ours = result.receipt
    same_model = ours["model_after"]["weights_sha256"] == receipt["model_after"]["weights_sha256"]
    lines = [("OK  " if same_model else "DIFF") + f"  model_after: {ours['model_after']['weights_sha256'][:16]}… "
             + ("(identical)" if same_model else f"vs the receipt's {receipt['model_after']['weights_sha256'][:16]}…")]
    figures = _figures(receipt["evaluation"])
    again = _figures(ours["evaluation"])
    same_figures = figures == again
    detail = "identical" if same_figures else "; ".join(
        f"{k} {figures[k]:.4f} -> {again.get(k, float('nan')):.4f}" for k in figures if figures[k] != again.get(k))
    lines.append(("OK  " if same_figures else "DIFF") + f"  figures: {len(figures)} {detail}")
    read, stored = ours["stats"].get("importances_sha256"), receipt.get("stats", {}).get("importances_sha256")
    if read != stored and stored is not None:
        lines.append(f"DIFF  stored importances: {(read or 'none')[:16]}… vs the receipt's {stored[:16]}… (recomputed "
                     "since the request: the method read other figures)")
    lines.append(f"--    time: unlearning took {ours['timing']['unlearn_seconds']:.0f} s here, "
                 f"{receipt['timing']['unlearn_seconds']:.0f} s in the receipt")
    return Reproduction(same_model and same_figures, lines, ours)


def _figures(evaluation: dict) -> dict[str, float]:
    found = {}
    for when in ("before", "after"):
        for group, values in evaluation[when].items():
            if group == "vs_retrained":  # needs the retrained model, which a reproduction does not take
                continue
            for name, value in values.items():
                if isinstance(value, float):
                    found[f"{when}.{group}.{name}"] = value
    return found
