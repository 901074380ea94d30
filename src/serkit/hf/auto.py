"""serkit models as `transformers` models: `AutoConfig` / `AutoModelForAudioClassification` classes.

`serkit export MODEL_DIR --hf -o HF_DIR` writes a directory these classes load, so that
`transformers.pipeline("audio-classification", model=HF_DIR)` runs a serkit model after `import serkit`
(serkit registers them with the Auto classes when `transformers` is imported: serkit.hf.hook). The model
takes the raw 16 kHz waveform (`input_values`, with `attention_mask`), applies the preprocessing it was
trained with (silence trimming, fixed length) utterance by utterance, and returns logits over `id2label`:
the same probabilities as `serkit predict`.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForAudioClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "serkit"


class SerkitConfig(PretrainedConfig):
    """`serkit`: what serkit's model directory config.json says about the model (architecture, options,
    preprocessing, sample rate) and the JSON files saved beside its weights; labels in `id2label`."""

    model_type = MODEL_TYPE

    def __init__(self, serkit: dict | None = None, **kwargs):
        self.serkit = serkit or {}
        super().__init__(**kwargs)


class SerkitForAudioClassification(PreTrainedModel):
    config_class = SerkitConfig
    base_model_prefix = "ser"
    main_input_name = "input_values"

    def __init__(self, config: SerkitConfig):
        super().__init__(config)
        from serkit.data.dataset import Preprocessing
        from serkit.models.modeldir import build_saved

        saved = config.serkit
        labels = [config.id2label[i] for i in range(len(config.id2label))]
        self.ser = build_saved({**saved, "labels": labels}, saved.get("files") or {}, where="the transformers config")
        self.preprocessing = Preprocessing.from_dict({**(saved.get("preprocessing") or {}), "sample_rate": saved["sample_rate"]})
        self.post_init()

    def _init_weights(self, module):
        # serkit's modules initialise their weights themselves and from_pretrained loads every one; what it
        # cannot load are the computed, unsaved buffers (mel filters, windows) of a model built on the meta device
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_) -> SequenceClassifierOutput:
        from serkit.data.dataset import pad_batch

        lengths = attention_mask.sum(-1).tolist() if attention_mask is not None else [input_values.shape[-1]] * len(input_values)
        rows = input_values.detach().float().cpu().numpy()
        waves = [self.preprocessing(np.ascontiguousarray(row[:int(n)])) for row, n in zip(rows, lengths)]
        wave, mask = pad_batch(waves)
        logits = self.ser(wave.to(self.device), mask.to(self.device))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register() -> None:
    """Make `AutoConfig` and `AutoModelForAudioClassification` know serkit's model type (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, SerkitConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForAudioClassification.register(SerkitConfig, SerkitForAudioClassification)
    except ValueError:
        pass


register()  # importing this module is registering (serkit.hf.hook imports it when transformers is imported)
