"""Check: does a folder serkit wrote hold any trace of a training speaker or file?

For every training speaker of a split and every one of their files (its manifest path, absolute
path, file name and stem), looks for the string itself (as a whole token) and its MD5, SHA-1 and
SHA-256 in every file under FOLDER (for safetensors, its JSON header). Prints each hit, or that
there is none, and exits 1 on any hit. Used on `make demo`'s forget output (bench/RESULTS.md 20).

    .venv/bin/python bench/privacy_traces.py runs/demo/TIME/forget-actor05 --split runs/demo/TIME/data/split.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serkit.data.splits import load_split
from serkit.unlearning.redaction import find_traces, identifiers_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--parts", nargs="*", default=["train"], help="whose traces to look for (default: train)")
    args = parser.parse_args()
    split = load_split(args.split)
    speakers = sorted({s for p in args.parts for s in split.speakers(p)})
    rows = split.manifest.subset(speakers)
    paths = [str(p) for p in rows.frame["path"]] + [str(p) for p in rows.audio_paths()]
    identifiers = identifiers_of(speakers, paths)
    files = sum(1 for p in args.folder.rglob("*") if p.is_file())
    hits = find_traces(args.folder, identifiers)
    print(f"{len(speakers)} speakers and {len(rows)} files of {', '.join(args.parts)} ({len(identifiers)} identifiers, "
          f"each also as MD5, SHA-1 and SHA-256) looked for in {files} files under {args.folder}")
    for hit in hits:
        print(f"  trace: {hit}")
    print(f"{len(hits)} traces" if hits else "no trace")
    sys.exit(1 if hits else 0)


if __name__ == "__main__":
    main()
