"""Benchmark: the downstream CNNs on ONE core, against what one core of this CPU can compute (issue [4 of 5]).

The issue asks CNN-6 for >= 200x real time per core (<= 15 ms for a 3 s utterance, one thread). This prints, per
model (built as `serkit transfer` builds it: 7 classes, 3 s fixed length; latency does not depend on the
weights): its multiply-accumulates for one 3 s utterance (counted with forward hooks over every Conv2d and
Linear), the median latency of PyTorch and of the fp32 ONNX model `serkit export` writes, both on one thread,
the FLOP rate each reaches, and the floor: the utterance's FLOPs divided by the rate this core reaches on a
large single-threaded float32 matrix product (the best dense float arithmetic it does, measured in the same
run). A latency target below that floor cannot be met by a runtime, only by less arithmetic or narrower numbers.

    .venv/bin/python bench/cnn_per_core.py
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
    from serkit.transfer.export import export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn6", "resnet9"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread; float32 GEMM on one core: "
          f"{peak:.1f} GFLOP/s")
    print("| model | MMAC per 3 s | floor at GEMM rate | PyTorch, 1 thread | ONNX fp32, 1 thread | x real time (best) | "
          "GFLOP/s reached (best) |")
    print("|---|---|---|---|---|---|---|")
    x, mask = pad_batch([(0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)])
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build_model(name, {}, 7).eval()
            macs = count_macs(model, x, mask)
            flops = 2 * macs
            path = save_model(Path(tmp) / name, model, [f"c{i}" for i in range(7)], Preprocessing(fixed_seconds=3.0))
            report = export_onnx(load_model(path), Path(tmp) / f"{name}-onnx", log=lambda *a: None)
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(Path(tmp) / f"{name}-onnx" / report["fp32"]["file"]), options,
                                           providers=["CPUExecutionProvider"])
            feed = {"waveform": x.numpy(), "mask": mask.numpy()}
            with torch.no_grad():
                torch_ms = latency_ms(lambda m=model: m(x, mask), args.repeats)
            onnx_ms = latency_ms(lambda s=session, f=feed: s.run(None, f), args.repeats)
            best = min(torch_ms, onnx_ms)
            print(f"| {name} | {macs / 1e6:.0f} | {flops / peak / 1e6:.1f} ms | {torch_ms:.1f} ms | {onnx_ms:.1f} ms | "
                  f"{3000 / best:.0f}x | {flops / best / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
