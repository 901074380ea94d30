"""Handcrafted features (paper 002's baselines): openSMILE functionals and bags of audio words.

Both write the same files as `serkit embed` (NAME.npy, one row per manifest row, plus NAME.json
with the manifest's SHA-256 and the rows' paths), so `serkit probe` and `serkit graph` take them.

- `opensmile_functionals`: one vector per utterance from an openSMILE feature set (ComParE_2016:
  6373 functionals; eGeMAPSv02: 88). openSMILE's licence allows research and education, not
  commercial use: it is an optional extra (`pip install serkit[features]`).
- `bag_of_audio_words`: openSMILE low-level descriptors (LLDs) and their deltas as two streams,
  each standardised and quantised by a k-means codebook (500 words per stream, as in the paper)
  learnt on the TRAINING speakers' frames only; an utterance is the normalised histogram of its
  frames' nearest words, the two streams concatenated.
"""

from __future__ import annotations

import time

import numpy as np

from serkit.data.dataset import Preprocessing, load_waves
from serkit.data.manifest import Manifest
from serkit.errors import SerkitError

SETS = ("ComParE_2016", "eGeMAPSv02", "eGeMAPSv01b", "GeMAPSv01b", "emobase", "IS09", "IS10", "IS13")
LICENCE = "openSMILE is free for research and education only (audEERING's licence); commercial use needs a licence"


def _smile(feature_set: str, level: str):
    try:
        import opensmile
    except ImportError:
        raise SerkitError("openSMILE features need the optional package: pip install opensmile "
                          f"(or serkit[features]); {LICENCE}") from None
    if feature_set not in SETS:
        raise SerkitError(f"unknown openSMILE feature set '{feature_set}'; choose one of {list(SETS)}")
    return opensmile.Smile(getattr(opensmile.FeatureSet, feature_set), getattr(opensmile.FeatureLevel, level))


def opensmile_functionals(manifest: Manifest, feature_set: str = "eGeMAPSv02", log=print,
                          progress=None) -> tuple[np.ndarray, dict]:
    """One row of functionals per manifest row; `progress(done, total)` after each utterance."""
    smile = _smile(feature_set, "Functionals")
    start = time.perf_counter()
    waves = load_waves(manifest.audio_paths(), Preprocessing())
    rows = []
    for w in waves:
        rows.append(smile.process_signal(w, 16000).values[0])
        if progress is not None:
            progress(len(rows), len(waves))
    array = np.nan_to_num(np.stack(rows).astype(np.float32))
    meta = {"features": f"openSMILE {feature_set} functionals", "names": list(smile.feature_names),
            "seconds": round(time.perf_counter() - start, 2), "licence": LICENCE}
    log(f"{len(rows)} utterances x {array.shape[1]} {feature_set} functionals in {meta['seconds']:.0f} s")
    return array, meta


def _llds(waves: list[np.ndarray], feature_set: str, progress=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    lld = _smile(feature_set, "LowLevelDescriptors")
    delta = _smile(feature_set, "LowLevelDescriptors_Deltas") if feature_set == "ComParE_2016" else None
    streams_a, streams_b = [], []
    for w in waves:
        a = np.nan_to_num(lld.process_signal(w, 16000).values.astype(np.float32))
        # sets without an own delta level (eGeMAPS): the first difference of the LLDs
        b = np.nan_to_num(delta.process_signal(w, 16000).values.astype(np.float32)) if delta is not None \
            else np.diff(a, axis=0, prepend=a[:1])
        streams_a.append(a)
        streams_b.append(b)
        if progress is not None:
            progress(len(streams_a), len(waves))
    return streams_a, streams_b


def bag_of_audio_words(manifest: Manifest, train_speakers: list[str], feature_set: str = "ComParE_2016",
                       words: int = 500, seed: int = 0, max_frames: int = 200_000, log=print,
                       progress=None) -> tuple[np.ndarray, dict]:
    """One histogram row per manifest row; the codebooks see training speakers' frames only. `progress(done,
    total)` follows the descriptor extraction, the long part."""
    from sklearn.cluster import MiniBatchKMeans

    if words < 2:
        raise SerkitError("--words must be at least 2")
    is_train = manifest.frame["speaker"].isin(train_speakers).to_numpy()
    if not is_train.any():
        raise SerkitError(f"none of the training speakers {train_speakers} is in {manifest.file}; "
                          "give the split the manifest belongs to")
    start = time.perf_counter()
    waves = load_waves(manifest.audio_paths(), Preprocessing())
    streams = _llds(waves, feature_set, progress)
    rng = np.random.default_rng(seed)
    out, info = [], []
    for name, per_utt in zip(("lld", "delta"), streams):
        train = np.concatenate([x for x, t in zip(per_utt, is_train) if t])
        mean, std = train.mean(0), train.std(0) + 1e-8
        if len(train) > max_frames:
            train = train[rng.choice(len(train), max_frames, replace=False)]
        k = min(words, len(train))
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3).fit((train - mean) / std)
        hist = np.zeros((len(per_utt), words), dtype=np.float32)
        for i, x in enumerate(per_utt):
            counts = np.bincount(kmeans.predict((x - mean) / std), minlength=words)
            hist[i] = counts / max(counts.sum(), 1)
        out.append(hist)
        info.append({"stream": name, "descriptors": int(train.shape[1]), "codebook_frames": int(len(train)), "words": k})
    array = np.concatenate(out, axis=1)
    meta = {"features": f"bag of audio words over openSMILE {feature_set} LLDs (+ deltas), {words} words per stream",
            "codebook_speakers": sorted(train_speakers), "streams": info, "seed": seed,
            "seconds": round(time.perf_counter() - start, 2), "licence": LICENCE}
    log(f"{len(waves)} utterances x {array.shape[1]} BoAW features ({len(info)} streams x {words} words; codebooks "
        f"from {int(is_train.sum())} training utterances) in {meta['seconds']:.0f} s")
    return array, meta
