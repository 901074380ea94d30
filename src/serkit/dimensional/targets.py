"""Dimensional SER (paper 004): the arousal/valence/dominance targets of a manifest.

A manifest carries one numeric column per dimension on a scale the recipe declares (any scale:
[1, 5], [-1, 1], ...). Values are normalised to [0, 1] for training; predictions are reported on
the declared scale again. A corpus with categories only can be given proxy targets from a
published category-to-dimensions table (labelled as a proxy wherever it is used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from serkit.data.manifest import Manifest
from serkit.errors import ConfigError, ManifestError

DIMENSIONS = ("arousal", "valence", "dominance")


def dimension_targets(manifest: Manifest, names: list[str], scale: tuple[float, float]) -> np.ndarray:
    """The manifest's dimension columns normalised to [0, 1]: (utterances, dimensions) float32.

    Refuses missing columns, non-numeric or empty values, and values outside the declared scale,
    naming the manifest, the column and the first offending utterance."""
    frame, where = manifest.frame, manifest.file or "the manifest"
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ManifestError(
            f"{where} has no column(s) {missing} for dimensional SER (it has {list(frame.columns)}); add one numeric "
            f"column per dimension, or list the columns it has in dimensions.names")
    low, high = scale
    out = np.empty((len(frame), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise ManifestError(f"{where}: column '{name}' of {frame['path'].iloc[i]} is {frame[name].iloc[i]!r}, not a number "
                                f"({bad.size} such rows); every utterance needs a value: fill them or drop those rows")
        outside = np.flatnonzero((values < low) | (values > high))
        if outside.size:
            i = int(outside[0])
            raise ManifestError(f"{where}: column '{name}' of {frame['path'].iloc[i]} is {values[i]:g}, outside the declared "
                                f"scale [{low:g}, {high:g}] ({outside.size} such rows); fix the values or dimensions.scale")
        out[:, j] = (values - low) / (high - low)
    return out


# Pleasure (valence), arousal and dominance of emotion terms on [-1, 1] from Russell & Mehrabian
# (1977), "Evidence for a three-factor theory of emotions", Journal of Research in Personality 11,
# 273-294, as commonly reused to map categories to PAD. Terms: anger <- "angry", disgust <-
# "disgusted", fear <- "afraid/fearful" (-0.64, 0.60, -0.43; some reuses take "terrified", -0.62,
# 0.82, -0.43, which serkit used before 2026-11-27 evening), happiness <- "happy", sadness <- "sad",
# surprise <- "surprised", boredom <- "bored". Neutral is the origin by construction. calm (RAVDESS)
# is not listed: no value could be checked here; supply a CSV mapping, or drop_unmapped. The values
# agree across several independent public reuses of the table (PAD models of affect such as ALMA,
# Gebhard 2005, and emotion-mapping code); they were not checked against the 1977 paper itself.
RUSSELL_MEHRABIAN_1977 = {
    "anger": {"valence": -0.51, "arousal": 0.59, "dominance": 0.25},
    "boredom": {"valence": -0.65, "arousal": -0.62, "dominance": -0.33},
    "disgust": {"valence": -0.60, "arousal": 0.35, "dominance": 0.11},
    "fear": {"valence": -0.64, "arousal": 0.60, "dominance": -0.43},
    "happiness": {"valence": 0.81, "arousal": 0.51, "dominance": 0.46},
    "sadness": {"valence": -0.63, "arousal": -0.27, "dominance": -0.33},
    "surprise": {"valence": 0.40, "arousal": 0.67, "dominance": -0.13},
    "neutral": {"valence": 0.0, "arousal": 0.0, "dominance": 0.0},
}
BUILTIN_PROXIES = {"builtin:russell-mehrabian-1977": (RUSSELL_MEHRABIAN_1977, (-1.0, 1.0),
                                                      "Russell & Mehrabian (1977) PAD of emotion terms")}


def load_proxy(spec: str, names: list[str], scale: tuple[float, float] | None) -> dict:
    """A category -> dimensions mapping: {"source", "scale", "mapping": {emotion: {dim: value}}}."""
    if spec in BUILTIN_PROXIES:
        table, own_scale, source = BUILTIN_PROXIES[spec]
        missing = [n for n in names if n not in next(iter(table.values()))]
        if missing:
            raise ConfigError(f"proxy {spec} has no {missing}; it gives valence, arousal, dominance")
        return {"source": f"{spec}: {source}", "scale": list(own_scale),
                "mapping": {e: {n: v[n] for n in names} for e, v in table.items()}}
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"dimensions.proxy {spec!r} is neither {sorted(BUILTIN_PROXIES)} nor a CSV file")
    if scale is None:
        raise ConfigError(f"dimensions.proxy {path}: give the mapping's scale as dimensions.scale: [low, high]")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"proxy mapping {path} is not a readable CSV ({str(exc).splitlines()[0][:120]})") from None
    missing = [c for c in ["emotion", *names] if c not in frame.columns]
    if missing:
        raise ConfigError(f"proxy mapping {path} lacks column(s) {missing}; it needs emotion and one column per dimension")
    mapping = {}
    for _, row in frame.iterrows():
        values = {n: pd.to_numeric(row[n], errors="coerce") for n in names}
        bad = [n for n, v in values.items() if not np.isfinite(v)]
        if bad:
            raise ConfigError(f"proxy mapping {path}: {row['emotion']} has a non-numeric value in {bad}")
        values = {n: float(v) for n, v in values.items()}
        off = [n for n, v in values.items() if not scale[0] <= v <= scale[1]]
        if off:
            raise ConfigError(f"proxy mapping {path}: {row['emotion']} has {off} outside the scale {list(scale)}")
        mapping[str(row["emotion"])] = values
    return {"source": f"CSV mapping {path.resolve()}", "scale": list(scale), "mapping": mapping}


def apply_proxy(manifest: Manifest, proxy: dict, names: list[str], drop_unmapped: bool) -> tuple[Manifest, int]:
    """A copy of `manifest` whose dimension columns come from its emotion categories; the number
    of utterances left out (categories the mapping lacks, when `drop_unmapped`)."""
    frame = manifest.frame
    known = frame["emotion"].isin(proxy["mapping"])
    if not known.all():
        unknown = sorted(frame.loc[~known, "emotion"].unique())
        if not drop_unmapped:
            raise ConfigError(f"proxy mapping ({proxy['source']}) has no values for {unknown} in {manifest.file}; "
                              "add them to a CSV mapping, or set dimensions.drop_unmapped: true")
        frame = frame[known].reset_index(drop=True)
    frame = frame.copy()
    for n in names:
        frame[n] = [proxy["mapping"][e][n] for e in frame["emotion"]]
    return Manifest(frame, manifest.file, manifest.sha256), int((~known).sum())
