"""serkit predict on long recordings: memory stays flat in the file's length (issue [5 of 5]).

Builds recordings of 1, 4 and 12 minutes from RAVDESS utterances (in a temporary folder, never in the
repo), runs `serkit predict MODEL FILE -o OUT` on each in a fresh process, and prints its peak RSS and
time, and the ratio of the longest to the shortest.

    .venv/bin/python bench/long_recording_benchmark.py MODEL_DIR [--segments fixed|vad]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def recording(path: Path, minutes: float) -> Path:
    frame = pd.read_csv(DATA / "manifest.csv", dtype=str)
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as out:
        written = 0
        while written < minutes * 60 * 16000:
            wave, _ = sf.read(DATA / frame.path.iloc[rng.integers(len(frame))], dtype="float32")
            wave = np.concatenate([wave, np.zeros(8000, dtype=np.float32)])
            out.write(wave)
            written += wave.shape[0]
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--segments", default="fixed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serkit-long-"))
    rows = []
    for minutes in (1, 4, 12):
        path = recording(work / f"rec{minutes}.wav", minutes)
        code = ("import resource, sys; from serkit.cli import run; "
                f"rc = run(['predict', {args.model!r}, {str(path)!r}, '--segments', {args.segments!r}, '-o', {str(work / f'out{minutes}')!r}]); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        peak = int(done.stdout.split("PEAK")[-1]) / 1024
        segments = len(pd.read_csv(work / f"out{minutes}" / f"rec{minutes}.segments.csv"))
        rows.append((minutes, peak, seconds, segments))
        print(f"{minutes:3d} min: peak RSS {peak:7.0f} MB, {seconds:6.1f} s ({segments} segments)", flush=True)
    print(f"peak RSS 12 min / 1 min: {rows[-1][1] / rows[0][1]:.2f}x for {rows[-1][0] / rows[0][0]:.0f}x the audio; "
          f"audio of 12 min as float32 would be {12 * 60 * 16000 * 4 / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
