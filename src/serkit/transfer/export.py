"""On-device export: a serkit model as ONNX (and int8), checked against PyTorch before it is kept.

The exported graph is the whole model, front end included: inputs `waveform` (float32, batch x
samples, 16 kHz) and `mask` (bool, same shape, True on real samples), output `logits`. Batch and
length are dynamic. Preprocessing the model was trained with (silence trimming, fixed length) is
not part of the graph; `serkit_model.json` beside it says what it is, with the labels.

Checks, on real utterances when the model's manifest is at hand (else on noise, said so):
- float32: the largest absolute logit difference to PyTorch must stay within `FP32_TOLERANCE`,
  and every prediction must agree; otherwise nothing is written.
- int8 (dynamic quantisation of weights with onnxruntime): agreement with PyTorch's predictions and
  the largest probability difference are measured and reported, not required: quantisation changes
  numbers, and how much it matters is for the user to judge.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from serkit.data.dataset import Preprocessing, load_waves, pad_batch
from serkit.errors import SerkitError
from serkit.io import atomic_dir
from serkit.models.modeldir import SavedModel

FP32_TOLERANCE = 1e-3
INSTALL = "pip install 'serkit[export]'  (onnx, onnxruntime, onnxscript)"


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise SerkitError(f"ONNX export needs {exc.name}: {INSTALL}") from None


def check_waves(saved: SavedModel, n: int = 24, seed: int = 0, raw: bool = False) -> tuple[list[np.ndarray], str]:
    """Up to n held-out utterances from the model's own manifest, else seeded noise of 1-4 s; preprocessed
    as the model was trained, or only resampled (`raw`) for a runtime that preprocesses them itself."""
    provenance = saved.config.get("provenance") or {}
    manifest, speakers = provenance.get("manifest"), provenance.get("speakers") or {}
    held_out = (speakers.get("test") or []) + (speakers.get("val") or [])
    if manifest and Path(manifest).is_file() and held_out:
        from serkit.data.manifest import read_manifest

        try:
            rows = read_manifest(manifest).subset(held_out)
            rows.frame = rows.frame.sample(n=min(n, len(rows)), random_state=seed)
            preprocessing = Preprocessing(sample_rate=saved.preprocessing.sample_rate) if raw else saved.preprocessing
            return load_waves(rows.audio_paths(), preprocessing), f"{len(rows)} held-out utterances of {manifest}"
        except SerkitError:
            pass
    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(int(16000 * rng.uniform(1, 4)))).astype(np.float32) for _ in range(n)]
    return waves, f"{n} noise signals (the model's manifest was not found)"


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_logits(session, waves: list[np.ndarray]) -> np.ndarray:
    out = []
    for wave in waves:  # one at a time, as on a device
        x, mask = pad_batch([wave])
        out.append(session.run(None, {"waveform": x.numpy(), "mask": mask.numpy()})[0][0])
    return np.stack(out)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def latency_ms(fn, repeats: int = 20) -> float:
    """Median wall time of `fn` in ms, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def frontend_nodes(path: Path) -> list[str]:
    """Names of the ONNX nodes that the torch exporter placed under the model's `frontend` module."""
    import onnx

    graph = onnx.load(str(path)).graph
    # the namespace holds the qualified module path: "/frontend: ..." or nested, "/upstream.frontend: ..."
    pattern = re.compile(r"/(?:[\w]+\.)*frontend:")
    return [n.name for n in graph.node
            if any(p.key == "namespace" and pattern.search(p.value) for p in n.metadata_props)]


def export_onnx(saved: SavedModel, out: Path | str, int8: bool = False, opset: int = 18, log=print) -> dict:
    """Write OUT/ with model.onnx (+ model.int8.onnx), serkit_model.json and export.json."""
    _require()
    if saved.task:
        raise SerkitError(f"{saved.path} is a {saved.task.get('type')} model; serkit export handles classifiers so far "
                          "(its checks compare class predictions)")
    if getattr(saved.model, "uses_text", False):
        raise SerkitError(f"{saved.path} reads transcripts; serkit export handles audio-only models")
    out = Path(out)
    model = saved.model.eval()
    waves, source = check_waves(saved)
    with torch.no_grad():
        reference = np.stack([model(*pad_batch([w]))[0].numpy() for w in waves])
    example = pad_batch([np.zeros(48000, dtype=np.float32)])
    with atomic_dir(out) as tmp:
        fp32 = tmp / "model.onnx"
        batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples", min=2048, max=16000 * 60)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, example, str(fp32), input_names=["waveform", "mask"], output_names=["logits"],
                                  dynamic_shapes=({0: batch, 1: samples}, {0: batch, 1: samples}), dynamo=True,
                                  opset_version=opset, external_data=False, verbose=False)
        except Exception as exc:  # the exporter's own errors are long and internal
            raise SerkitError(f"the {saved.config.get('architecture')} model could not be exported to ONNX "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        session = _ort_session(fp32)
        logits = _ort_logits(session, waves)
        max_diff = float(np.abs(logits - reference).max())
        agree = float((logits.argmax(1) == reference.argmax(1)).mean())
        if max_diff > FP32_TOLERANCE or agree < 1.0:
            raise SerkitError(f"the ONNX model differs from PyTorch (max logit difference {max_diff:.2g} > {FP32_TOLERANCE:g}, "
                              f"agreement {agree:.0%}); nothing was written")
        three_s = pad_batch([(0.1 * np.random.default_rng(1).standard_normal(48000)).astype(np.float32)])
        feed = {"waveform": three_s[0].numpy(), "mask": three_s[1].numpy()}
        report = {
            "checked_on": source,
            "fp32": {"file": "model.onnx", "bytes": fp32.stat().st_size, "max_abs_logit_diff": max_diff,
                     "tolerance": FP32_TOLERANCE, "prediction_agreement": agree,
                     "latency_ms_3s": latency_ms(lambda: session.run(None, feed))},
            "torch": {"parameters": int(sum(p.numel() for p in model.parameters())),
                      "latency_ms_3s": latency_ms(torch.no_grad()(lambda: model(*three_s)))},
            "opset": opset, "torch_version": torch.__version__,
        }
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = tmp / "model.int8.onnx"
            # the log-Mel front end stays float: its mel matrix multiplies a power spectrum whose
            # dynamic range int8 cannot hold (quantised, EmoDB CNN-6 agreed on 29 % of predictions)
            front = frontend_nodes(fp32)
            quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, nodes_to_exclude=front)
            qsession = _ort_session(q)
            qlogits = _ort_logits(qsession, waves)
            report["int8"] = {"file": "model.int8.onnx", "bytes": q.stat().st_size, "quantisation": "dynamic, int8 weights; front end kept float",
                              "float_frontend_nodes": len(front),
                              "prediction_agreement": float((qlogits.argmax(1) == reference.argmax(1)).mean()),
                              "max_abs_prob_diff": float(np.abs(_softmax(qlogits) - _softmax(reference)).max()),
                              "latency_ms_3s": latency_ms(lambda: qsession.run(None, feed))}
        (tmp / "serkit_model.json").write_text(json.dumps({
            "labels": saved.labels, "sample_rate": saved.preprocessing.sample_rate,
            "preprocessing": saved.preprocessing.to_dict(), "architecture": saved.config.get("architecture"),
            "inputs": {"waveform": "float32 (batch, samples), 16 kHz mono", "mask": "bool (batch, samples), True on real samples"},
            "outputs": {"logits": "float32 (batch, classes), softmax gives probabilities in label order"},
            "source_model": str(saved.path.resolve()) if saved.path else None, "source_weights_sha256": saved.weights_sha256,
        }, indent=2) + "\n")
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
