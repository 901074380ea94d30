"""Benchmark: on-device footprint of each downstream model against the upstream model (issue #6).

Parameters, ONNX fp32 size, int8 size, and CPU latency for one 3 s utterance (PyTorch, ONNX fp32,
ONNX int8 with the front end kept float), for CNN-6, ResNet-9 and VGG-15 (7 classes, EmoDB's
preprocessing: 3 s fixed length) and the upstream Whisper tiny.en (8 classes). Size and latency do
not depend on the weights, so each model is built as `serkit transfer` builds it, saved, and passed
through `serkit export` (which also checks ONNX against PyTorch); trained models give the same
figures (compare bench/RESULTS.md section 6). Agreement of int8 with fp32 is a property of trained
weights and is not reported here.

    .venv/bin/python bench/footprint.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

MODELS = {"cnn6": ({}, 7, 3.0), "resnet9": ({}, 7, 3.0), "vgg15": ({}, 7, 3.0),
          "whisper": ({"checkpoint": "builtin:whisper-tiny.en"}, 8, None)}


def main() -> None:
    from serkit.data.dataset import Preprocessing
    from serkit.models import build_model, load_model, save_model
    from serkit.transfer.export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | parameters | ONNX fp32 | ONNX int8 | latency PyTorch | latency ONNX fp32 | latency ONNX int8 |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            options, classes, fixed = MODELS[name]
            model = build_model(name, options, classes).eval()
            path = save_model(Path(tmp) / name, model, [f"c{i}" for i in range(classes)], Preprocessing(fixed_seconds=fixed))
            report = export_onnx(load_model(path), Path(tmp) / f"{name}-onnx", int8=True, log=lambda *a: None)
            mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
            print(f"| {name} | {report['torch']['parameters'] / 1e6:.2f} M | {mb(report['fp32']['bytes'])} | "
                  f"{mb(report['int8']['bytes'])} | {report['torch']['latency_ms_3s']:.1f} ms | "
                  f"{report['fp32']['latency_ms_3s']:.1f} ms | {report['int8']['latency_ms_3s']:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
