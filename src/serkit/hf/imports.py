"""`serkit models import-hf HF_DIR -o MODEL_DIR`: a local `transformers` audio classifier as a serkit model.

Wav2Vec2 / HuBERT / WavLM `*ForSequenceClassification` map exactly onto serkit's `ssl` architecture:
the backbone as it is, `use_weighted_layer_sum` as `layer_weights`, the projector and classifier as the
head's fc1 and fc2 with no activation between them (`head_activation: none`; transformers projects every
frame and then averages, serkit averages and then projects: the same, as both are linear), the feature
extractor's `do_normalize` as `normalize_waveform`.

`WhisperForAudioClassification` maps onto serkit's `whisper` architecture with `input_window: full`: its
feature extractor pads every clip to the 30-s window and the encoder averages over all 1500 frames, the
padding's included, which that option reproduces (log-Mel normalised over the padded window, no attention
mask); the encoder as it is, `use_weighted_layer_sum` as `layer_weights`, projector and classifier as fc1
and fc2 with no activation between them.

The import is kept only if serkit's logits match the checkpoint's (fed by its own feature extractor)
within `TOLERANCE` on generated audio of three lengths.

A checkpoint does not say what it was trained on; `--split` (the split it was trained with, made by
`serkit data split`) records that, and `serkit forget` / `serkit models importances` need it.
Weights are read from safetensors only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from serkit import SAMPLE_RATE
from serkit.errors import SerkitError

TOLERANCE = 1e-4  # largest logit difference to the checkpoint's own forward
BACKBONES = {"Wav2Vec2ForSequenceClassification": ("wav2vec2", "wav2vec2"),
             "HubertForSequenceClassification": ("hubert", "hubert"),
             "WavLMForSequenceClassification": ("wavlm", "wavlm")}  # architecture -> (serkit backbone, weight prefix)
WHISPER = "WhisperForAudioClassification"
SUPPORTED = [*BACKBONES, WHISPER]


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SerkitError(f"{path.parent} has no {path.name}; give a transformers checkpoint directory ({what})") from None
    except (OSError, ValueError) as exc:
        raise SerkitError(f"cannot read {path} ({exc}); restore it from the checkpoint") from None


def import_hf(hf_dir: Path | str, out: Path | str, split: Path | str | None = None, manifest: Path | str | None = None,
              trained_on: list[str] | None = None, log=print) -> Path:
    from transformers import AutoConfig, AutoModelForAudioClassification

    from serkit.data.dataset import Preprocessing
    from serkit.io import refuse_existing
    from serkit.models import build_model
    from serkit.models.modeldir import save_model

    hf_dir, out = Path(hf_dir), Path(out)
    refuse_existing(out, "model directory")
    config = _read_json(hf_dir / "config.json", "config.json and model.safetensors")
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in SUPPORTED:
        raise SerkitError(f"{hf_dir}/config.json: architectures {config.get('architectures')} is not one serkit imports; "
                          "supported: " + ", ".join(SUPPORTED))
    weights = sorted(hf_dir.glob("*.safetensors"))
    if not weights:
        raise SerkitError(f"{hf_dir} has no .safetensors weights; serkit never unpickles (.bin can run code): re-save it "
                          "with save_pretrained(safe_serialization=True)")
    extractor = _read_json(hf_dir / "preprocessor_config.json", "its feature extractor's preprocessor_config.json")
    if int(extractor.get("sampling_rate", SAMPLE_RATE)) != SAMPLE_RATE:
        raise SerkitError(f"{hf_dir}/preprocessor_config.json: sampling_rate {extractor['sampling_rate']}; serkit models "
                          f"take {SAMPLE_RATE} Hz audio")
    if architecture == WHISPER:
        _check_whisper_extractor(hf_dir, extractor, config)
    labels = [str(config["id2label"][k]) for k in sorted(config.get("id2label") or {}, key=int)]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise SerkitError(f"{hf_dir}/config.json: id2label must name at least 2 distinct classes (it has {labels})")
    data = _training_data(split, manifest, trained_on or ["train"])
    try:
        source = AutoModelForAudioClassification.from_pretrained(str(hf_dir), local_files_only=True, use_safetensors=True).eval()
    except (OSError, ValueError) as exc:
        raise SerkitError(f"cannot load {hf_dir} with transformers: {str(exc).splitlines()[0][:200]}") from None
    backbone_config = _backbone_fields(AutoConfig.from_pretrained(str(hf_dir), local_files_only=True).to_dict())
    head = {"layer_weights": bool(config.get("use_weighted_layer_sum")), "head_dim": int(config.get("classifier_proj_size", 256)),
            "head_activation": "none", "freeze_feature_encoder": True}
    if architecture == WHISPER:
        model = build_model("whisper", {"hf_config": backbone_config, "input_window": "full", **head}, len(labels)).eval()
        prefix, target = "encoder", "encoder."
    else:
        backbone, prefix = BACKBONES[architecture]
        options = {"backbone": backbone, "hf_config": backbone_config, "normalize_waveform": bool(extractor.get("do_normalize", True)),
                   **head}
        model = build_model("ssl", options, len(labels)).eval()
        target = "backbone."
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith(prefix + "."):
            state[target + key[len(prefix) + 1:]] = value
        elif key.startswith(("projector.", "classifier.")):
            state[key.replace("projector.", "fc1.").replace("classifier.", "fc2.")] = value
        elif key == "layer_weights":
            state["layer_logits"] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SerkitError(f"{hf_dir}: weights serkit cannot place: missing {missing[:3]}, unexpected {unexpected[:3]}")
    diff = _check(source, model, _reference_input(hf_dir, architecture, model))
    if diff > TOLERANCE:
        raise SerkitError(f"the imported model's logits differ from {hf_dir}'s by up to {diff:.2g} (tolerance {TOLERANCE:g}); "
                          "nothing was written")
    sha = hashlib.sha256(b"".join(w.read_bytes() for w in weights)).hexdigest()
    provenance = {"imported": {"format": "transformers", "architecture": architecture, "weights_sha256": sha,
                               "max_abs_logit_diff": diff}}
    if data is not None:
        provenance.update(data)
    path = save_model(out, model, labels, Preprocessing(), provenance)
    log(f"imported {architecture} ({len(labels)} classes): logits within {diff:.2g} of transformers'"
        + ("" if data else "; no --split given, so forget / importances will ask for the data it was trained on"))
    return path


def _backbone_fields(config: dict) -> dict:
    """The backbone's config without the head's and the bookkeeping fields a fresh config refills."""
    dropped = {"architectures", "id2label", "label2id", "use_weighted_layer_sum", "classifier_proj_size", "transformers_version",
               "_name_or_path", "model_type", "dtype", "torch_dtype"}
    return {k: v for k, v in config.items() if k not in dropped}


def _training_data(split, manifest, trained_on: list[str]) -> dict | None:
    """The provenance `serkit train` would have recorded about the data: manifest, speakers per part."""
    if split is None:
        if manifest is not None:
            raise SerkitError("--manifest needs --split (the split names the speakers the checkpoint was trained on)")
        return None
    from serkit.data.splits import load_split

    loaded = load_split(split, manifest, None)
    parts = loaded.parts()
    unknown = [p for p in trained_on if p not in parts or not parts[p]]
    if unknown:
        raise SerkitError(f"--trained-on {','.join(trained_on)}: split {split} has no speakers in {unknown}")
    return {"manifest": str(loaded.manifest.file.resolve()), "speakers": {p: list(v) for p, v in parts.items()},
            "trained_on": list(trained_on)}


# WhisperFeatureExtractor's defaults, for the fields serkit's Whisper log-Mel fixes
WHISPER_EXTRACTOR = {"feature_extractor_type": None, "feature_size": 80, "n_fft": 400, "hop_length": 160, "chunk_length": 30,
                     "padding_value": 0.0, "dither": 0.0}


def _check_whisper_extractor(hf_dir: Path, extractor: dict, config: dict) -> None:
    """The checkpoint's feature extractor must be the log-Mel serkit's Whisper computes, padded to the encoder's window."""
    window = int(config.get("max_source_positions", 1500)) * 2 * 160 / SAMPLE_RATE
    expected = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": int(config.get("num_mel_bins", 80)),
                "n_fft": 400, "hop_length": 160, "chunk_length": window, "padding_value": 0.0, "dither": 0.0}
    differ = {k: extractor.get(k, default) for k, default in WHISPER_EXTRACTOR.items() if extractor.get(k, default) != expected[k]}
    if differ:
        raise SerkitError(f"{hf_dir}/preprocessor_config.json: {differ}; serkit's Whisper computes the log-Mel of {expected} "
                          "(chunk_length: the encoder's window, in seconds)")


def _reference_input(hf_dir: Path, architecture: str, model):
    """What the checkpoint's forward takes for a (1, T) waveform: what its feature extractor makes of it."""
    if architecture == WHISPER:
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor.from_pretrained(str(hf_dir), local_files_only=True)
        return lambda x: {"input_features": torch.from_numpy(
            extractor(x[0].numpy(), sampling_rate=SAMPLE_RATE, return_tensors="np").input_features)}
    return lambda x: {"input_values": _normalised(x) if model.normalize is not None else x}


@torch.no_grad()
def _check(source, model, reference_input) -> float:
    """Largest logit difference to the checkpoint's own forward, one seeded noise signal at a time."""
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(SAMPLE_RATE * s))).astype(np.float32) for s in (1.0, 2.3, 3.1)]
    diff = 0.0
    for wave in waves:  # one at a time, as a pipeline runs them
        x = torch.from_numpy(wave)[None]
        theirs = source(**reference_input(x)).logits
        ours = model(x, torch.ones_like(x, dtype=torch.bool))
        diff = max(diff, float((theirs - ours).abs().max()))
    return diff


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """transformers' feature extractor's do_normalize (zero mean, unit variance), which its model expects done."""
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-7)
