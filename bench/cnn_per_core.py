"""Benchmark: the downstream CNNs on ONE core, against what one core of this CPU can compute (issue [4 of 5]).

The issue asks CNN-6 for >= 200x real time per core (<= 15 ms for a 3 s utterance, one thread). This prints, per
model (built as `serkit transfer` builds it: 7 classes, 3 s fixed length; latency does not depend on the
weights): its multiply-accumulates for one 3 s utterance (counted with forward hooks over every Conv2d and
Linear), the median latency of PyTorch and of the fp32 ONNX model `serkit export` writes, both on one thread,
the FLOP rate each reaches, and the floor: the utterance's FLOPs divided by the rate this core reaches on a
large single-threaded float32 matrix product (the best dense float arithmetic it does, measured in the same
run). A latency target below that floor cannot be met by a runtime, only by less arithmetic or narrower numbers.
Narrower numbers: the int8 models `serkit export --int8` writes, static (weights and activations; ranges from
--calibration's utterances) and dynamic (weights only), timed the same way. With --model-dir (a trained model),
the same three ONNX models of THAT model are then compared with PyTorch on every held-out utterance of its own
manifest (its validation and test speakers): the predictions that change.

    .venv/bin/python bench/cnn_per_core.py --model-dir runs/emodb-cnn6-cal/model
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from serkit.transfer.export import latency_ms


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """float32 GEMM rate of one thread: 2 n^3 FLOPs per product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / (latency_ms(lambda: a @ b, repeats) / 1000) / 1e9


def count_macs(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> int:
    macs = []

    def hook(module, inputs, out):
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs.append(out.numel() * per_output)
        elif isinstance(module, torch.nn.Linear):
            macs.append(out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x, mask)
    for h in handles:
        h.remove()
    return sum(macs)


def main() -> None:
    import onnxruntime as ort

    from serkit.data.dataset import Preprocessing, pad_batch
    from serkit.models import build_model, load_model, save_model
    from serkit.transfer.export import _ort_session, export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn6", "resnet9"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calibration", type=Path, default=Path("runs/data/emodb/manifest.csv"),
                        help="utterances for static int8's activation ranges")
    parser.add_argument("--model-dir", type=Path, help="a trained model: agreement of its ONNX models on held-out audio")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread; float32 GEMM on one core: "
          f"{peak:.1f} GFLOP/s")
    print("| model | MMAC per 3 s | floor at GEMM rate | PyTorch, 1 thread | ONNX fp32, 1 thread | ONNX int8 static | "
          "ONNX int8 dynamic | x real time (best) | GFLOP/s reached (fp32) |")
    print("|---|---|---|---|---|---|---|---|---|")
    x, mask = pad_batch([(0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build_model(name, {}, 7).eval()
            macs = count_macs(model, x, mask)
            flops = 2 * macs
            path = save_model(Path(tmp) / name, model, [f"c{i}" for i in range(7)], Preprocessing(fixed_seconds=3.0))
            out = Path(tmp) / f"{name}-onnx"
            export_onnx(load_model(path), out, int8=True, calibration=args.calibration, log=lambda *a: None)
            export_onnx(load_model(path), Path(tmp) / f"{name}-dyn", int8=True, int8_mode="dynamic", log=lambda *a: None)
            feed = {"waveform": x.numpy(), "mask": mask.numpy()}
            onnx_ms = [latency_ms(lambda s=_ort_session(f, threads=1), f=feed: s.run(None, f), args.repeats)
                       for f in (out / "model.onnx", out / "model.int8.onnx", Path(tmp) / f"{name}-dyn" / "model.int8.onnx")]
            with torch.no_grad():
                torch_ms = latency_ms(lambda m=model: m(x, mask), args.repeats)
            best = min(torch_ms, *onnx_ms)
            print(f"| {name} | {macs / 1e6:.0f} | {flops / peak / 1e6:.1f} ms | {torch_ms:.1f} ms | {onnx_ms[0]:.1f} ms | "
                  f"{onnx_ms[1]:.1f} ms | {onnx_ms[2]:.1f} ms | {3000 / best:.0f}x | {flops / onnx_ms[0] / 1e6:.1f} |", flush=True)
        if args.model_dir:
            agreement(args.model_dir, Path(tmp))


def agreement(model_dir: Path, tmp: Path) -> None:
    """Every held-out utterance of the model's manifest through PyTorch and its three ONNX models, one at a time."""
    from serkit.data.dataset import load_waves, pad_batch
    from serkit.data.manifest import read_manifest
    from serkit.models import load_model
    from serkit.transfer.export import _ort_logits, _ort_session, export_onnx

    saved = load_model(model_dir)
    provenance = saved.config["provenance"]
    rows = read_manifest(provenance["manifest"]).subset(provenance["speakers"]["val"] + provenance["speakers"]["test"])
    waves = load_waves(rows.audio_paths(), saved.preprocessing)
    static = export_onnx(saved, tmp / "trained", int8=True, log=lambda *a: None)["int8"]
    export_onnx(saved, tmp / "trained-dyn", int8=True, int8_mode="dynamic", log=lambda *a: None)
    with torch.no_grad():
        reference = np.stack([saved.model(*pad_batch([w]))[0].numpy() for w in waves]).argmax(1)
    print(f"\n{model_dir}: {len(waves)} held-out utterances (validation and test speakers), one at a time; static int8 "
          f"calibrated on {static['calibrated_on']}")
    print("| model | predictions as PyTorch | differing |")
    print("|---|---|---|")
    for label, path in (("ONNX fp32", tmp / "trained" / "model.onnx"), ("ONNX int8 static", tmp / "trained" / "model.int8.onnx"),
                        ("ONNX int8 dynamic", tmp / "trained-dyn" / "model.int8.onnx")):
        session = _ort_session(path, threads=1)
        got = _ort_logits(session, waves).argmax(1)
        print(f"| {label} | {np.mean(got == reference):.2%} | {int(np.sum(got != reference))} of {len(waves)} |", flush=True)

if __name__ == "__main__":
    main()
