"""Long recordings (a call, an interview, a podcast): predicted window by window, streamed.

An SER model is trained on utterances of a few seconds; a 12-minute file is a sequence of them. The
file is read in blocks (soundfile), mixed to mono and resampled as a stream (soxr), and cut into
segments: fixed windows (`window` seconds every `hop` seconds; the last, shorter one kept if it is at
least half a window), or the speech regions a voice-activity detector finds (silero-vad's ONNX model,
streamed 32 ms at a time; regions longer than a window are cut into windows). Each segment gets the
model's own preprocessing and is predicted in batches, so memory stays flat in the file's length.

The aggregate is the duration-weighted mean of the segments' probabilities, and each label's share of
the predicted time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from serkit import SAMPLE_RATE
from serkit.data.audio import audio_info
from serkit.errors import AudioError, ConfigError
from serkit.models.modeldir import SavedModel

BLOCK_SECONDS = 20.0  # read this much of the file at a time
VAD_CHUNK = 512  # samples at 16 kHz: what silero-vad takes per call
VAD_INSTALL = "pip install silero-vad"


@dataclass
class LongPrediction:
    file: str
    duration: float
    segmenter: str
    labels: list[str]
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)

    @property
    def aggregate(self) -> dict:
        """Duration-weighted mean probabilities, the label they pick, and each label's share of the time."""
        if not self.starts:
            return {"label": None, "probabilities": {}, "time_share": {}, "segments": 0, "speech_seconds": 0.0}
        weights = np.array(self.ends) - np.array(self.starts)
        probs = np.stack(self.probabilities)
        mean = (probs * weights[:, None]).sum(0) / weights.sum()
        winners = probs.argmax(1)
        share = {lab: float(weights[winners == i].sum() / weights.sum()) for i, lab in enumerate(self.labels)}
        return {"label": self.labels[int(mean.argmax())], "probabilities": dict(zip(self.labels, map(float, mean))),
                "time_share": share, "segments": len(self.starts), "speech_seconds": float(weights.sum())}

    def rows(self) -> list[dict]:
        return [{"file": self.file, "start": round(s, 3), "end": round(e, 3), "label": self.labels[int(p.argmax())],
                 **{f"p_{lab}": float(v) for lab, v in zip(self.labels, p)}}
                for s, e, p in zip(self.starts, self.ends, self.probabilities)]


def stream_audio(path: Path | str, sample_rate: int = SAMPLE_RATE, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The file as consecutive mono float32 blocks at `sample_rate`, never all of it in memory."""
    try:
        handle = sf.SoundFile(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises its own types for every decoding failure
        raise AudioError(f"cannot decode audio file {path} ({str(exc).splitlines()[0][:120]}); check it plays, or "
                         "convert it to WAV/FLAC") from None
    with handle:
        resampler = soxr.ResampleStream(handle.samplerate, sample_rate, 1, dtype="float32", quality="HQ") \
            if handle.samplerate != sample_rate else None
        for block in handle.blocks(blocksize=int(block_seconds * handle.samplerate), dtype="float32", always_2d=True):
            mono = block.mean(1) if block.shape[1] > 1 else block[:, 0]
            out = resampler.resample_chunk(np.ascontiguousarray(mono)) if resampler else mono
            if out.size:
                yield np.ascontiguousarray(out, dtype=np.float32)
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail.astype(np.float32)


def fixed_windows(blocks: Iterator[np.ndarray], window: float, hop: float,
                  sample_rate: int = SAMPLE_RATE) -> Iterator[tuple[float, np.ndarray]]:
    """(start seconds, samples) of every `window`-second window, one every `hop` seconds."""
    size, step = int(window * sample_rate), int(hop * sample_rate)
    buffer, offset = np.zeros(0, dtype=np.float32), 0  # offset: the file position of buffer[0], in samples
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while buffer.shape[0] >= size:
            yield offset / sample_rate, buffer[:size].copy()
            buffer, offset = buffer[step:], offset + step
    if buffer.shape[0] >= size / 2 and (offset == 0 or buffer.shape[0] > size - step):  # a tail not inside the last window
        yield offset / sample_rate, buffer.copy()


def speech_regions(blocks: Iterator[np.ndarray], window: float, hop: float, threshold: float = 0.5,
                   min_seconds: float = 0.5) -> Iterator[tuple[float, np.ndarray]]:
    """(start seconds, samples) of the speech silero-vad finds, regions longer than `window` cut into windows."""
    try:
        from silero_vad import VADIterator, load_silero_vad
    except ImportError:
        raise ConfigError(f"--segments vad needs silero-vad: {VAD_INSTALL} (or use --segments fixed)") from None
    import torch

    vad = VADIterator(load_silero_vad(onnx=True), threshold=threshold, sampling_rate=SAMPLE_RATE)
    buffer, offset, start = np.zeros(0, dtype=np.float32), 0, None  # buffer holds the file from `offset` on
    position = 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while position + VAD_CHUNK <= offset + buffer.shape[0]:
            chunk = buffer[position - offset:position - offset + VAD_CHUNK]
            event = vad(torch.from_numpy(chunk.copy()), return_seconds=False) or {}
            position += VAD_CHUNK
            if "start" in event:
                start = max(offset, int(event["start"]))
            if "end" in event and start is not None:
                yield from _cut(buffer[start - offset:int(event["end"]) - offset], start, window, hop, min_seconds)
                start = None
            # silero dates a start back by its padding (and a chunk): keep a second before the current position
            keep_from = max(offset, start if start is not None else position - SAMPLE_RATE)
            buffer, offset = buffer[keep_from - offset:], keep_from
    if start is not None:
        yield from _cut(buffer[start - offset:], start, window, hop, min_seconds)


def _cut(region: np.ndarray, start: int, window: float, hop: float, min_seconds: float) -> Iterator[tuple[float, np.ndarray]]:
    if region.shape[0] < min_seconds * SAMPLE_RATE:
        return
    if region.shape[0] <= window * SAMPLE_RATE:
        yield start / SAMPLE_RATE, region.copy()
        return
    for at, piece in fixed_windows(iter([region]), window, hop):
        yield start / SAMPLE_RATE + at, piece


def check_segments(segments: str) -> None:
    if segments not in ("fixed", "vad"):
        raise ConfigError(f"--segments {segments}: choose fixed or vad")


def window_and_hop(saved: SavedModel, window: float | None, hop: float | None) -> tuple[float, float]:
    """--window and --hop, their defaults filled in (the model's fixed length, else 4 s; half a window), checked."""
    window = window if window is not None else saved.preprocessing.fixed_seconds or 4.0
    hop = hop if hop is not None else window / 2
    if window <= 0 or hop <= 0 or hop > window:
        raise ConfigError(f"--window {window:g} / --hop {hop:g}: give a window > 0 and a hop between 0 and the window")
    if saved.model.max_seconds is not None and window > saved.model.max_seconds:
        raise ConfigError(f"--window {window:g} s is longer than this model's {saved.model.max_seconds:g}-s input")
    return window, hop


def no_segments(path: Path | str, segments: str, duration: float) -> ConfigError:
    """What to say when a long recording has nothing to predict (vad on silence, a file under half a window)."""
    return ConfigError(f"{path}: no {'speech' if segments == 'vad' else 'window'} found to predict ({duration:.0f} s); "
                       "try --segments fixed or a shorter --window")


def segment_batches(saved: SavedModel, path: Path | str, window: float | None, hop: float | None, segments: str = "fixed",
                    batch_size: int = 16, compute=None) -> Iterator[tuple[list[float], list[float], np.ndarray]]:
    """(starts, ends, outputs) of each batch of a long recording's segments, streamed: `compute(waves)` (default:
    the class probabilities) on up to `batch_size` segments at a time, each after the model's own preprocessing."""
    from serkit.inference.predict import predict_proba

    check_segments(segments)
    window, hop = window_and_hop(saved, window, hop)
    compute = compute or (lambda waves: predict_proba(saved.model, waves, batch_size))

    def run(batch: list[tuple[float, np.ndarray]]) -> tuple[list[float], list[float], np.ndarray]:
        outputs = compute([saved.preprocessing(wave) for _, wave in batch])
        return [s for s, _ in batch], [s + wave.shape[0] / SAMPLE_RATE for s, wave in batch], outputs

    def batches():
        blocks = stream_audio(path)
        source = fixed_windows(blocks, window, hop) if segments == "fixed" else speech_regions(blocks, window, hop)
        batch: list[tuple[float, np.ndarray]] = []
        for item in source:
            batch.append(item)
            if len(batch) == batch_size:
                yield run(batch)
                batch = []
        if batch:
            yield run(batch)

    return batches()


def weighted_mean(saved: SavedModel, path: Path | str, window: float | None, hop: float | None, segments: str = "fixed",
                  batch_size: int = 16, compute=None) -> tuple[np.ndarray, int]:
    """The duration-weighted mean of `compute`'s outputs over a long recording's segments, and how many there were;
    streamed, with a running sum. No segment at all is an error naming the file."""
    total, weight, count = None, 0.0, 0
    for starts, ends, outputs in segment_batches(saved, path, window, hop, segments, batch_size, compute):
        weights = np.array(ends) - np.array(starts)
        part = (np.asarray(outputs, dtype=np.float64) * weights[:, None]).sum(0)
        total = part if total is None else total + part
        weight, count = weight + float(weights.sum()), count + len(starts)
    if total is None:
        info = audio_info(path)
        raise no_segments(path, segments, info.frames / info.samplerate)
    return total / weight, count


def predict_long(saved: SavedModel, path: Path | str, window: float, hop: float, segments: str = "fixed",
                 batch_size: int = 16, progress=None) -> LongPrediction:
    """Predict every segment of a long recording (see the module's docstring)."""
    batches = segment_batches(saved, path, window, hop, segments, batch_size)  # checks the options before reading
    info = audio_info(path)  # a file that cannot be read is named, one line
    result = LongPrediction(str(path), info.frames / info.samplerate, segments, list(saved.labels))
    for starts, ends, probs in batches:
        result.starts += starts
        result.ends += ends
        result.probabilities += list(probs)
        if progress:
            progress(result.ends[-1], result.duration)
    return result


def _seconds(path) -> float:
    info = audio_info(path)
    return info.frames / info.samplerate


def long_rows(manifest, long_after: float | None) -> np.ndarray:
    """Which rows of a manifest are long recordings (over `long_after` seconds; None: none are): their
    `duration_s` where the manifest has it, else the file's header (nothing is decoded)."""
    import pandas as pd

    if long_after is None:
        return np.zeros(len(manifest), dtype=bool)
    listed = pd.to_numeric(manifest.frame["duration_s"], errors="coerce").to_numpy(dtype=float) \
        if "duration_s" in manifest.frame.columns else np.full(len(manifest), np.nan)
    durations = [d if np.isfinite(d) else _seconds(path) for d, path in zip(listed, manifest.audio_paths())]
    return np.array(durations, dtype=float) > long_after


def long_summary(rows: int, long_after: float, segments: str, window: float, hop: float) -> dict:
    """What metrics.json records when some rows were long recordings."""
    return {"rows": int(rows), "long_after": long_after, "segments": segments, "window": window, "hop": hop,
            "scored_by": "duration-weighted mean over the segments"}


def long_note(summary: dict) -> str:
    """One sentence for a report: how many rows were long recordings and how they were scored."""
    n, w, h = summary["rows"], summary["window"], summary["hop"]
    how = f"fixed windows of {w:g} s every {h:g} s" if summary["segments"] == "fixed" else \
        f"the speech regions silero-vad found (vad), cut into windows of at most {w:g} s every {h:g} s"
    return (f"{n} {'row was a long recording' if n == 1 else 'rows were long recordings'} (over {summary['long_after']:g} s), "
            f"scored by {'its' if n == 1 else 'their'} duration-weighted mean over {how}.")


def timeline_png(path: Path | str, result: LongPrediction) -> None:
    """Each label's probability over time, with the predicted label as a band underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from serkit.plots import save_png

    fig, (top, band) = plt.subplots(2, 1, figsize=(11, 3.6), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    centres = (np.array(result.starts) + np.array(result.ends)) / 2
    probs = np.stack(result.probabilities) if result.probabilities else np.zeros((0, len(result.labels)))
    colours = plt.get_cmap("tab10").colors
    for i, label in enumerate(result.labels):
        top.plot(centres, probs[:, i], color=colours[i % 10], label=label, lw=1.2)
    top.set_ylabel("probability")
    top.set_ylim(0, 1)
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    top.set_title(f"{Path(result.file).name}: {result.segmenter} segments")
    for s, e, p in zip(result.starts, result.ends, probs):
        band.axvspan(s, e, color=colours[int(p.argmax()) % 10], lw=0)
    band.set_yticks([])
    band.set_xlabel("time (s)")
    band.set_xlim(0, max(result.duration, 1e-3))
    save_png(fig, path)
