"""serkit from Python, end to end on real speech: train, predict, evaluate, answer a deletion request.

    python examples/quickstart.py OUT_DIR [--data ../shared/data]

A CNN-6 trained for 2 epochs on 6 RAVDESS actors (4 emotions, 6 clips each) learns little; the point is the
calls and what they return. The test suite runs this file (tests/test_examples.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import serkit
from serkit.data.manifest import read_manifest
from serkit.data.splits import save_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)

    # 1. a manifest (path, speaker, emotion) and a speaker-independent split
    ravdess = pd.read_csv(args.data / "ravdess" / "manifest.csv", dtype=str)
    rows = ravdess[ravdess.speaker.isin(["01", "02", "03", "04", "05", "06"])
                   & ravdess.emotion.isin(["anger", "happiness", "neutral", "sadness"])]
    rows = rows.groupby(["speaker", "emotion"]).head(6).assign(path=lambda f: [str(args.data / "ravdess" / p) for p in f.path])
    rows[["path", "speaker", "emotion"]].to_csv(args.out / "manifest.csv", index=False)
    save_split(args.out / "split.json", read_manifest(args.out / "manifest.csv"), seed=0,
               parts={"train": ["01", "02", "03", "04"], "val": ["05"], "test": ["06"]})

    # 2. train: a recipe as a dict (or a YAML file's path), overrides as `--set` takes them
    run = serkit.train({"name": "quickstart", "seed": 0, "output_dir": str(args.out / "run"),
                        "data": {"split": str(args.out / "split.json"), "trim_silence_db": 40},
                        "model": {"architecture": "cnn6"}, "train": {"batch_size": 8, "progress_bar": False}},
                       overrides=["train.max_epochs=2"], log=lambda *_: None)
    print(f"trained: {run.model_dir}")

    # 3. predict: one Prediction per file
    for p in serkit.predict(run.model_dir, rows.path.iloc[:2]):
        print(f"predicted {Path(p.file).name}: {p.label} ({p.confidence:.2f})")

    # 4. evaluate on speakers the model never heard (it refuses those it trained on)
    test = serkit.evaluate(run.model_dir, split=args.out / "split.json", part="test")
    print(f"test UAR {test.uar:.3f}, accuracy {test.accuracy:.3f} on {test.n} utterances")

    # 5. a deletion request: speaker 02 asks for 4 of their recordings to be forgotten
    done = serkit.forget(run.model_dir, args.out / "forget-02", speaker="02", n=4, method="neg-grad",
                         params={"epochs": 2}, log=lambda *_: None)
    before, after = done.receipt["evaluation"]["before"], done.receipt["evaluation"]["after"]
    print(f"forgot {done.receipt['forget_set']['n']} utterances ({done.receipt['outcome']['stop_reason']}): forget-set "
          f"accuracy {before['forget']['accuracy']:.2f} -> {after['forget']['accuracy']:.2f}, membership AUC "
          f"{before['membership']['auc']:.2f} -> {after['membership']['auc']:.2f}; receipt {done.out_dir / 'receipt.json'}")


if __name__ == "__main__":
    main()
