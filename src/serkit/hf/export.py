"""`serkit export MODEL_DIR --hf`: a directory `transformers.pipeline("audio-classification")` loads.

The directory holds serkit's model as `SerkitForAudioClassification` (serkit.hf.auto: config.json,
model.safetensors) and a `Wav2Vec2FeatureExtractor` that only batches the raw waveform
(preprocessor_config.json); the model applies the preprocessing it was trained with itself. It is
checked before it is kept: loaded back through `AutoModelForAudioClassification` and run through
`pipeline`, its probabilities must match `serkit predict`'s on held-out utterances within
`TOLERANCE`, every label the same, or nothing is written.

It is a directory to share: the training provenance (manifest, speakers, forgotten utterances) stays
behind, and no machine path goes in (a backbone checkpoint's path becomes its saved config).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from serkit.errors import SerkitError
from serkit.io import atomic_dir
from serkit.models.modeldir import SavedModel
from serkit.models.registry import get_architecture

TOLERANCE = 1e-5  # largest probability difference to serkit predict
FAMILIES = ("cnn", "ssl")  # CNNs on log-Mel, wav2vec 2.0 / HuBERT / WavLM, Whisper


def serkit_section(saved: SavedModel) -> dict:
    """What the transformers config carries of the model directory's: enough to rebuild the model, nothing
    about its training data."""
    family = get_architecture(saved.config["architecture"]).family
    if saved.task:
        raise SerkitError("this is a dimensional model (arousal / valence / dominance): an audio-classification pipeline "
                          "has no place for its outputs; export it with --onnx")
    if family not in FAMILIES:
        raise SerkitError(f"export --hf supports CNN, SSL and Whisper classifiers; a {family} model "
                          f"({saved.config['architecture']}) is not supported yet: export it with --onnx")
    files = saved.model.extra_files()
    options = dict(saved.config["options"])
    if "checkpoint" in options:  # a local path (or builtin name): the weights travel in model.safetensors
        options.update(checkpoint=None, hf_config=files["backbone_config.json"])
    return {"architecture": saved.config["architecture"], "options": options, "sample_rate": saved.config["sample_rate"],
            "preprocessing": saved.preprocessing.to_dict(), "files": files}


def export_hf(saved: SavedModel, out: Path | str, log=print) -> dict:
    """Write OUT/ (config.json, model.safetensors, preprocessor_config.json, serkit_export.json)."""
    import torch
    from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor, pipeline

    from serkit.hf.auto import SerkitConfig, SerkitForAudioClassification, register
    from serkit.inference.predict import predict_proba
    from serkit.transfer.export import check_waves

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: nothing to ask the hub for
    register()
    section = serkit_section(saved)
    labels = saved.labels
    config = SerkitConfig(serkit=section, id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                          architectures=[SerkitForAudioClassification.__name__])
    model = SerkitForAudioClassification(config)
    model.ser.load_state_dict(saved.model.state_dict(), strict=True)
    waves, checked_on = check_waves(saved, raw=True)
    expected = predict_proba(saved.model, [saved.preprocessing(w) for w in waves])
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=saved.preprocessing.sample_rate, padding_value=0.0,
                                 do_normalize=False, return_attention_mask=True).save_pretrained(tmp)
        AutoModelForAudioClassification.from_pretrained(tmp, local_files_only=True)  # what a user's code does first
        classify = pipeline("audio-classification", model=str(tmp), device=torch.device("cpu"))
        got = np.zeros_like(expected)
        for i, wave in enumerate(waves):
            for answer in classify({"raw": wave, "sampling_rate": saved.preprocessing.sample_rate}, top_k=None):
                got[i, labels.index(answer["label"])] = answer["score"]
        diff = float(np.abs(got - expected).max())
        agree = float((got.argmax(1) == expected.argmax(1)).mean())
        if diff > TOLERANCE or agree < 1.0:
            raise SerkitError(f"the exported model does not reproduce serkit predict (largest probability difference {diff:.2g}, "
                              f"{agree:.0%} of labels the same, on {len(waves)} checks); nothing was written")
        report = {"format": "transformers", "pipeline": "audio-classification", "model_type": config.model_type,
                  "needs": "import serkit (registers SerkitForAudioClassification with transformers' Auto classes)",
                  "checked_on": checked_on.split(" of ")[0], "max_abs_prob_diff": diff, "label_agreement": agree,
                  "tolerance": TOLERANCE}
        (tmp / "serkit_export.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"checked on {checked_on}: largest probability difference to serkit predict {diff:.2g}, every label the same")
    return report
