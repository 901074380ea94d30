"""Reference baseline on the same split as a serkit run: openSMILE eGeMAPSv02 functionals + linear SVM.

C is chosen on the validation speakers (grid 1e-3 ... 1), features standardised on training data.
openSMILE is under a non-commercial licence, so it is a benchmark-only dependency:
`pip install opensmile`.

    .venv/bin/python bench/egemaps_baseline.py runs/bench/ravdess-*/split.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.splits import load_split
from serkit.metrics import uar, war


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split")
    args = parser.parse_args()
    import opensmile

    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    split = load_split(args.split)
    start = time.perf_counter()
    data = {}
    for part in ("train", "val", "test"):
        rows = split.part(part)
        waves = load_waves(rows.audio_paths(), Preprocessing())
        data[part] = (np.stack([smile.process_signal(w, 16000).values[0] for w in waves]), np.array(rows.frame["emotion"]))
    best = None
    for c in (1e-3, 1e-2, 1e-1, 1.0):
        clf = make_pipeline(StandardScaler(), SVC(kernel="linear", C=c)).fit(*data["train"])
        val = uar(data["val"][1], clf.predict(data["val"][0]))
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    pred = clf.predict(data["test"][0])
    print(f"eGeMAPSv02 + linear SVM (C={c:g} chosen on val): val UAR {val:.3f}, "
          f"test UAR {uar(data['test'][1], pred):.3f}, test accuracy {war(data['test'][1], pred):.3f} "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
