"""On-device export: a serkit model as ONNX (and int8), checked against PyTorch before it is kept.

The exported graph is the whole model, front end included: inputs `waveform` (float32, batch x
samples, 16 kHz) and `mask` (bool, same shape, True on real samples), output `logits`. Batch and
length are dynamic. Preprocessing the model was trained with (silence trimming, fixed length) is
not part of the graph; `serkit_model.json` beside it says what it is, with the labels.

Checks, on real utterances when the model's manifest is at hand (else on noise, said so):
- float32: the largest absolute logit difference to PyTorch must stay within `FP32_TOLERANCE`,
  and every prediction must agree; otherwise nothing is written.
- int8 (onnxruntime's quantisation): agreement with PyTorch's predictions and the largest probability
  difference are measured and reported, not required: quantisation changes numbers, and how much it
  matters is for the user to judge. `static` (the default) also quantises the activations, with ranges
  read from calibration audio (the model's own training speakers, or a manifest the owner gives), so
  convolutions run in int8 throughout; `dynamic` quantises the weights only and needs no audio.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from serkit.data.dataset import Preprocessing, load_waves, pad_batch
from serkit.errors import SerkitError, first_line
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
            return load_waves(rows.audio_paths(), preprocessing), f"{len(rows)} held-out utterances of the model's manifest"
        except SerkitError:
            pass
    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(int(16000 * rng.uniform(1, 4)))).astype(np.float32) for _ in range(n)]
    return waves, f"{n} noise signals (the model's manifest was not found)"


INT8_MODES = ("static", "dynamic")
CALIBRATION_UTTERANCES = 64


def calibration_waves(saved: SavedModel, manifest: Path | str | None = None, n: int = CALIBRATION_UTTERANCES,
                      seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Up to n utterances, preprocessed as the model was trained, from which static int8 reads its activation
    ranges: from `manifest` (every row) when given, else from the training speakers of the model's own manifest.
    A forgotten model records neither (its provenance is private), so it needs `manifest`."""
    from serkit.data.manifest import read_manifest

    if manifest is not None:
        # its name is not recorded: a file or folder name can name a speaker
        rows, where = read_manifest(manifest), "a manifest given with --calibration"
        if len(rows) == 0:
            raise SerkitError(f"calibration manifest {manifest}: no utterances; give one with audio rows")
    else:
        provenance = saved.config.get("provenance") or {}
        own, train = provenance.get("manifest"), (provenance.get("speakers") or {}).get("train")
        if not (own and Path(own).is_file() and train):
            raise SerkitError(f"static int8 needs calibration audio and {saved.path} names no training speakers in a "
                              "manifest that exists here (a forgotten model keeps its data private): give --calibration "
                              "MANIFEST (utterances the model may still use), or --int8-mode dynamic (weights only, no audio)")
        rows, where = read_manifest(own).subset(train), "the model's training speakers"
        if len(rows) == 0:
            raise SerkitError(f"{own} has no utterances of the model's training speakers; give --calibration MANIFEST")
    rows.frame = rows.frame.sample(n=min(n, len(rows)), random_state=seed)
    return load_waves(rows.audio_paths(), saved.preprocessing), f"{len(rows)} utterances of {where}"


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over utterances, one at a time (as the model runs on a device)."""

    def __init__(self, waves: list[np.ndarray]):
        self._waves = iter(waves)

    def get_next(self) -> dict | None:
        wave = next(self._waves, None)
        return None if wave is None else _feed(wave)


def _quantise(fp32: Path, q: Path, mode: str, calibration: list[np.ndarray] | None, work: Path) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # the log-Mel front end stays float: its mel matrix multiplies a power spectrum whose
    # dynamic range int8 cannot hold (quantised, EmoDB CNN-6 agreed on 29 % of predictions)
    front = frontend_nodes(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantiser advises through the root logger on every call
    try:
        if mode == "dynamic":
            quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, nodes_to_exclude=front)
            return {"quantisation": "dynamic, int8 weights; front end kept float", "float_frontend_nodes": len(front)}
        prepared = work / "prepared.onnx"
        # shapes only, no graph optimisation: the front end's nodes must keep the names excluded below
        quant_pre_process(str(fp32), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        # uint8 activations with int8 per-channel weights: the pair x86's int8 kernels (VNNI) take directly
        quantize_static(str(prepared), str(q), _Feeds(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=front)
        prepared.unlink()
    except Exception as exc:  # onnxruntime's quantiser raises whatever its graph passes meet
        other = "static" if mode == "dynamic" else "dynamic"
        raise SerkitError(f"{mode} int8 quantisation failed on this graph ({first_line(exc)}); nothing was written: "
                          f"try --int8-mode {other}, or export without --int8") from None
    finally:
        root.setLevel(level)
    return {"quantisation": "static, int8 weights (per channel) and activations (min-max ranges); front end kept float",
            "float_frontend_nodes": len(front)}


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(wave: np.ndarray) -> dict:
    """One utterance as the exported graph's inputs."""
    x, mask = pad_batch([wave])
    return {"waveform": x.numpy(), "mask": mask.numpy()}


def _ort_logits(session, waves: list[np.ndarray]) -> np.ndarray:
    return np.stack([session.run(None, _feed(wave))[0][0] for wave in waves])  # one at a time, as on a device


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


def _drop_source_traces(path: Path) -> None:
    """The exporter records each node's Python stack, with this machine's file paths; an exported model is shared,
    so each node keeps only `namespace` (module names, which `frontend_nodes` reads)."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key == "namespace"]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
            graphs += [g for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for g in a.graphs]
    onnx.save(model, str(path))


def frontend_nodes(path: Path) -> list[str]:
    """Names of the ONNX nodes that the torch exporter placed under the model's `frontend` module."""
    import onnx

    graph = onnx.load(str(path)).graph
    # the namespace holds the qualified module path: "/frontend: ..." or nested, "/upstream.frontend: ..."
    pattern = re.compile(r"/(?:[\w]+\.)*frontend:")
    return [n.name for n in graph.node
            if any(p.key == "namespace" and pattern.search(p.value) for p in n.metadata_props)]


def export_onnx(saved: SavedModel, out: Path | str, int8: bool = False, opset: int = 18, log=print,
                int8_mode: str = "static", calibration: Path | str | None = None) -> dict:
    """Write OUT/ with model.onnx (+ model.int8.onnx), serkit_model.json and export.json. `int8_mode`: static
    (activation ranges from `calibration_waves`) or dynamic."""
    _require()
    if int8_mode not in INT8_MODES:
        raise SerkitError(f"int8 mode '{int8_mode}': choose {' or '.join(INT8_MODES)}")
    if calibration is not None and not (int8 and int8_mode == "static"):
        raise SerkitError("--calibration gives static int8 its activation ranges: add --int8 (static is its default mode)")
    if saved.task:
        raise SerkitError(f"{saved.path} is a {saved.task.get('type')} model; serkit export handles classifiers so far "
                          "(its checks compare class predictions)")
    if getattr(saved.model, "uses_text", False):
        raise SerkitError(f"{saved.path} reads transcripts; serkit export handles audio-only models")
    out = Path(out)
    model = saved.model.eval()
    waves, source = check_waves(saved)
    calibration_set = calibration_waves(saved, calibration) if int8 and int8_mode == "static" else None  # before OUT/
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
                              f"({first_line(exc)})") from None
        _drop_source_traces(fp32)
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
            q = tmp / "model.int8.onnx"
            how = _quantise(fp32, q, int8_mode, calibration_set and calibration_set[0], tmp)
            try:
                qsession = _ort_session(q)
                qlogits = _ort_logits(qsession, waves)
            except Exception as exc:  # an int8 kernel this onnxruntime build lacks
                raise SerkitError(f"onnxruntime cannot run the {int8_mode} int8 model ({first_line(exc)}); nothing "
                                  "was written: try another --int8-mode, or export without --int8") from None
            report["int8"] = {"file": "model.int8.onnx", "bytes": q.stat().st_size, "mode": int8_mode, **how,
                              **({"calibrated_on": calibration_set[1]} if calibration_set else {}),
                              "prediction_agreement": float((qlogits.argmax(1) == reference.argmax(1)).mean()),
                              "max_abs_prob_diff": float(np.abs(_softmax(qlogits) - _softmax(reference)).max()),
                              "latency_ms_3s": latency_ms(lambda: qsession.run(None, feed))}
        (tmp / "serkit_model.json").write_text(json.dumps({
            "labels": saved.labels, "sample_rate": saved.preprocessing.sample_rate,
            "preprocessing": saved.preprocessing.to_dict(), "architecture": saved.config.get("architecture"),
            "inputs": {"waveform": "float32 (batch, samples), 16 kHz mono", "mask": "bool (batch, samples), True on real samples"},
            "outputs": {"logits": "float32 (batch, classes), softmax gives probabilities in label order"},
            # the weights' hash names the source; its path would be a machine path, and a folder name can name a speaker
            "source_weights_sha256": saved.weights_sha256,
        }, indent=2) + "\n")
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
