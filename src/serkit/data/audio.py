"""Audio I/O: any file libsndfile reads, to 16 kHz mono float32, with errors a user can act on.

Stereo is averaged to mono and other sample rates are resampled with soxr (high quality): these
are conversions, not errors. Missing, undecodable, truncated, empty and digitally silent files are
errors that name the file and say what to do.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from serkit import SAMPLE_RATE
from serkit.errors import AudioError

# One least-significant bit of 16-bit PCM: a file whose peak is below it is digital silence.
SILENCE_PEAK = 1.0 / 32768.0
# Shortest input every model accepts: one 512-sample analysis window at 16 kHz.
MIN_SAMPLES = 512

# What a user can do about a bad file depends on where its name came from: a manifest's row, or
# the command line (`serkit predict FILES`), which has no manifest to fix.
FIXES = {
    "manifest": {"missing": "check the manifest's path column or remove it from the manifest (or re-export it)",
                 "folder": "check the manifest's path column: each row names one audio file",
                 "bad": "remove it from the manifest (or re-export it)"},
    "command line": {"missing": "check the path", "folder": "give the audio files in it (e.g. {path}/*.wav)",
                     "bad": "give another file (or re-export this one)"},
}


def audio_info(path: Path | str, named_in: str = "manifest") -> sf._SoundFileInfo:
    path = Path(path)
    fix = FIXES[named_in]
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file; {fix['folder'].format(path=path)}")
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}; {fix['missing']}")
    try:
        return sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(
            f"cannot decode audio file {path} ({_reason(exc)}); is it WAV/FLAC/OGG? {fix['bad']}"
        ) from None


def load_audio(path: Path | str, sample_rate: int = SAMPLE_RATE, check_silence: bool = True,
               named_in: str = "manifest") -> np.ndarray:
    """Read `path` as mono float32 at `sample_rate`.

    Raises AudioError for a missing, undecodable, truncated, empty or (if `check_silence`)
    all-silent file, saying what to do where the file was named (`named_in`, a key of FIXES).
    """
    path = Path(path)
    info = audio_info(path, named_in)
    fix = FIXES[named_in]["bad"]
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"cannot decode audio file {path} ({_reason(exc)}); {fix}") from None
    declared = max(info.frames, _wav_declared_frames(path) or 0)
    if declared > 0 and data.shape[0] < declared:
        raise AudioError(
            f"audio file {path} is truncated: header says {declared} frames, only {data.shape[0]} "
            f"could be read; {fix}"
        )
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples); {fix}")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        wave = soxr.resample(wave, sr, sample_rate, quality="HQ").astype(np.float32)
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if check_silence and float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioError(f"audio file {path} is silent (every sample below 1 LSB of 16-bit); {fix}")
    if wave.shape[0] < MIN_SAMPLES:
        raise AudioError(
            f"audio file {path} is too short ({wave.shape[0]} samples, need at least {MIN_SAMPLES} "
            f"= {MIN_SAMPLES / sample_rate * 1000:.0f} ms at {sample_rate} Hz); {fix}"
        )
    return wave


def write_flac(path: Path | str, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit FLAC. Peaks above full scale are scaled down, never clipped."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 1.0:
        wave = wave / peak
    sf.write(str(path), wave, sample_rate, subtype="PCM_16", format="FLAC")


def trim_silence(wave: np.ndarray, top_db: float, frame: int = 512, hop: int = 128) -> np.ndarray:
    """Cut leading and trailing frames quieter than `top_db` below the loudest frame.

    Acted corpora (RAVDESS) carry about a second of near-silence at each end; trimming it halves
    the compute per utterance. Keeps at least one frame; returns the input if nothing is quieter.
    """
    if wave.shape[0] <= frame:
        return wave
    n_frames = 1 + (wave.shape[0] - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n_frames)[:, None]
    rms = np.sqrt(np.mean(wave[idx] ** 2, axis=1) + 1e-20)
    db = 20.0 * np.log10(rms / rms.max())
    loud = np.flatnonzero(db > -top_db)
    start = loud[0] * hop
    stop = min(wave.shape[0], loud[-1] * hop + frame)
    return wave[start:stop]


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header promises. libsndfile silently shortens a truncated WAV to what
    is there, so the promise is read here. None if not a plain WAV or if the size is unset."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = handle.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):  # streaming writers leave it unset
                    return None
                return size // block_align
            else:
                handle.seek(size + (size & 1), 1)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
