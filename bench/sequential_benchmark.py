"""Benchmark: deletion requests one after another, against one request for all of them, against retraining.

From one trained model: K successive `serkit forget` requests of N utterances each, one training
speaker per request, each request's input the previous one's output (its receipts chained); one
request of the same K x N utterances together (a --forget list); and the model retrained without
them (the original recipe, one run per seed). Every final model is measured on the same data:
unseen-speaker (val) UAR and the share of the original's kept, accuracy and UAR on the K x N
forgotten utterances, a loss-threshold membership attack (forgotten vs unseen utterances: AUC
0.5 = they look unseen), and the forgotten speakers' other training utterances. Time per request
is wall clock on this machine; the runs share it with nothing serkit starts itself.

    .venv/bin/python bench/sequential_benchmark.py runs/ravdess-whisper/model --split runs/data/ravdess/split.json \\
        --requests 5 --n 10 --retrain-seeds 0 1 2 -o runs/bench/sequential
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from serkit.config import parse_value
from serkit.models import load_model
from serkit.unlearning.commitments import commitments
from serkit.unlearning.evaluation import evaluation_sets, forget_report
from serkit.unlearning.forget_set import ForgetSet, build_forget_set, training_data
from serkit.unlearning.keys import load_request_keys
from serkit.unlearning.run import forget
from serkit.unlearning.verify import verify_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--split", type=Path, required=True, help="the split the model was trained with")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--speakers", nargs="*", help="one training speaker per request (default: the first K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the unlearning method, for the sequential and the joint requests")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "log.txt").open("a")

    def log(*parts):
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    params = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.params)}
    base = load_model(args.model_dir)
    data = training_data(base, split=args.split)
    speakers = args.speakers or data.trained_speakers[: args.requests]
    log(f"base model {args.model_dir} ({base.weights_sha256[:12]}), requests: {speakers}, N = {args.n} each")
    sets = [build_forget_set(base, speaker=s, n=args.n, seed=args.seed, data=data) for s in speakers]
    union_rows = pd.concat([s.rows for s in sets]).reset_index(drop=True)
    union = ForgetSet(union_rows, data.manifest, "files")
    listing = args.out / "forget_all.txt"
    listing.write_text("\n".join(str(p) for p in union.audio_paths()) + "\n")
    results = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").is_file() else {}

    def done(name):
        return name in results

    def save():
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    # 1. K requests, one after another, each on the previous output
    previous, chain = args.model_dir, []
    for k, (speaker, forget_set) in enumerate(zip(speakers, sets), start=1):
        out = args.out / f"sequential-{k}"
        chain.append(out / "receipt.json")
        if not (out / "receipt.json").is_file():
            start = time.perf_counter()
            result = forget(previous, out, speaker=speaker, n=args.n, seed=args.seed, split=args.split, params=params,
                            log=log)
            log(f"request {k} (speaker {speaker}): {time.perf_counter() - start:.0f} s wall, "
                f"{result.receipt['timing']['unlearn_seconds']:.0f} s unlearning")
        receipt = json.loads((out / "receipt.json").read_text())
        key = bytes.fromhex(load_request_keys(out / "forget-keys.json").get(receipt["request_id"]).key)
        if commitments(key, forget_set.digests()) != receipt["forget_set"]["commitments"]:
            raise SystemExit(f"request {k} forgot other utterances than the ones 'together' forgets")
        previous = out / "model"
        results[f"sequential-{k}"] = _receipt_summary(receipt)
        save()
    links = verify_chain(chain)
    log("chain: " + ("unbroken" if not any(c.ok is False for c in links) else "BROKEN: " + "; ".join(c.line() for c in links)))

    # 2. one request for all K x N together
    together = args.out / "together"
    if not (together / "receipt.json").is_file():
        forget(args.model_dir, together, files=[str(p) for p in union.audio_paths()], seed=args.seed, split=args.split,
               params=params, log=log)
    results["together"] = _receipt_summary(json.loads((together / "receipt.json").read_text()))
    save()

    # 3. retrained without them, one per seed
    for seed in args.retrain_seeds:
        out = args.out / f"retrained-seed{seed}"
        if not (out / "receipt.json").is_file():
            forget(args.model_dir, out, files=[str(p) for p in union.audio_paths()], method="retrain",
                   params={"seed": seed}, split=args.split, log=log)
        results[f"retrained-seed{seed}"] = _receipt_summary(json.loads((out / "receipt.json").read_text()))
        save()

    # 4. every final model measured on the same utterances
    models = {"original": args.model_dir, f"sequential (after {len(speakers)})": previous, "together": together / "model",
              **{f"retrained-seed{s}": args.out / f"retrained-seed{s}" / "model" for s in args.retrain_seeds}}
    evaluation = {}
    for name, path in models.items():
        saved = load_model(path)
        sets_ = evaluation_sets(saved, data, union, "val")
        report = forget_report(saved.model, *sets_)
        evaluation[name] = {"val_uar": report["val"]["uar"], "forget_accuracy": report["forget"]["accuracy"],
                            "forget_uar": report["forget"]["uar"], "membership_auc": report["membership"]["auc"],
                            "speakers_other_accuracy": report.get("speaker_other_training", {}).get("accuracy")}
        log(f"{name}: {json.dumps(evaluation[name])}")
    base_uar = evaluation["original"]["val_uar"]
    for values in evaluation.values():
        values["kept"] = values["val_uar"] / base_uar
    results["evaluation"] = evaluation
    save()
    (args.out / "table.md").write_text(_table(results, speakers, args.n, args.retrain_seeds))
    log((args.out / "table.md").read_text())


def _receipt_summary(receipt: dict) -> dict:
    ev = receipt["evaluation"]
    return {"seconds": receipt["timing"]["unlearn_seconds"], "n": receipt["forget_set"]["n"],
            "chain_index": receipt["chain"]["index"], "model_after": receipt["model_after"]["weights_sha256"],
            "val_uar_before": ev["before"]["val"]["uar"], "val_uar_after": ev["after"]["val"]["uar"],
            "forget_accuracy_after": ev["after"]["forget"]["accuracy"], "membership_auc_after": ev["after"]["membership"]["auc"],
            "stop_reason": receipt["outcome"].get("stop_reason"), "target_reached": receipt["outcome"].get("target_reached")}


def _table(results: dict, speakers: list[str], n: int, seeds: list[int]) -> str:
    ev = results["evaluation"]
    seq_seconds = sum(results[f"sequential-{k}"]["seconds"] for k in range(1, len(speakers) + 1))
    retrain = [results[f"retrained-seed{s}"]["seconds"] for s in seeds]
    seconds = {"original": None, f"sequential (after {len(speakers)})": seq_seconds, "together": results["together"]["seconds"],
               **{f"retrained-seed{s}": results[f"retrained-seed{s}"]["seconds"] for s in seeds}}
    rows = ["| model | val UAR | kept | forget acc. | forget UAR | membership AUC | speakers' other utts | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for name, values in ev.items():
        s = seconds.get(name)
        rows.append(f"| {name} | {values['val_uar']:.3f} | {values['kept']:.1%} | {values['forget_accuracy']:.2f} | "
                    f"{values['forget_uar']:.3f} | {values['membership_auc']:.2f} | "
                    f"{values['speakers_other_accuracy']:.2f} | {'' if s is None else f'{s:.0f}'} |")
    per_request = ", ".join(f"{results[f'sequential-{k}']['seconds']:.0f}" for k in range(1, len(speakers) + 1))
    return (f"{len(speakers)} requests of N = {n} (speakers {', '.join(speakers)}), one request of all {len(speakers) * n}, "
            f"and retraining without them (seeds {seeds}); the forgotten = all {len(speakers) * n} utterances.\n\n"
            + "\n".join(rows) + f"\n\nSequential requests took {per_request} s (sum {seq_seconds:.0f} s)"
            + (f"; retraining {np.mean(retrain):.0f} s on average.\n" if retrain else ".\n"))


if __name__ == "__main__":
    main()
