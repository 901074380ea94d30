"""Differentiable front ends: the model's first layer, so gradients reach the waveform.

Both take a padded waveform batch (B, T) and its mask (B, T) and keep padding out of every
statistic, so an utterance gives the same features alone or in a padded batch.
"""

from __future__ import annotations

import functools

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers.audio_utils import mel_filter_bank


def float32_under_autocast(forward):
    """A log-Mel front end's forward, run in float32 even inside torch.autocast (mixed-precision training, PGD in
    bfloat16): a power spectrum spans more orders of magnitude than a 16-bit float resolves before the log (or holds
    at all, in float16). Outside autocast nothing changes, so exported graphs stay as they were."""

    @functools.wraps(forward)
    def wrapped(self, waveform: torch.Tensor, *args, **kwargs):
        if not torch.is_autocast_enabled(waveform.device.type):
            return forward(self, waveform, *args, **kwargs)
        with torch.autocast(waveform.device.type, enabled=False):
            return forward(self, waveform.float(), *args, **kwargs)

    return wrapped


class SpecAugmentConfig(BaseModel):
    """SpecAugment (Park et al. 2019) masks, drawn per utterance: `time_masks` bands of up to
    `time_width` of the utterance's frames, `freq_masks` bands of up to `freq_width` mel bins."""

    model_config = ConfigDict(extra="forbid")

    time_masks: int = Field(2, ge=0)
    time_width: float = Field(0.1, ge=0, le=1)
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0)


class LogMelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: int = 16_000
    n_fft: int = Field(512, description="window length in samples (paper 003: 512)")
    hop_length: int = Field(256, description="hop in samples (paper 003: 256)")
    n_mels: int = Field(64, description="mel bins (paper 003: 64)")
    f_min: float = 0.0
    f_max: float | None = None
    spec_augment: "SpecAugmentConfig | None" = Field(
        None, description="time and frequency masking of the log-Mel while training (never at inference)"
    )
    normalize: str = Field(
        "instance",
        description="'instance': zero mean, unit variance per utterance over its valid frames "
        "(cancels recording gain); 'none': raw log-Mel in dB",
    )


LogMelConfig.model_rebuild()


class LogMel(nn.Module):
    """Log-Mel spectrogram (dB) from a waveform: Hann window, no centring, power spectrum.

    Frames are taken only where the whole window lies in the signal (no centring), so padding
    never leaks into a valid frame. Output (B, frames, n_mels) and a frame mask (B, frames).
    """

    def __init__(self, config: LogMelConfig | None = None):
        super().__init__()
        self.config = config = config or LogMelConfig()
        if config.normalize not in ("instance", "none"):
            raise ValueError(f"frontend.normalize must be 'instance' or 'none', not {config.normalize!r}")
        self.register_buffer("mel_filters", torch.empty(0), persistent=False)
        self.register_buffer("window", torch.empty(0), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """The filters and window, computed, never saved (a loader that builds the model on the meta device
        calls this once the weights are in: serkit.hf.auto)."""
        config = self.config
        filters = mel_filter_bank(
            num_frequency_bins=config.n_fft // 2 + 1, num_mel_filters=config.n_mels,
            min_frequency=config.f_min, max_frequency=config.f_max or config.sample_rate / 2,
            sampling_rate=config.sample_rate, norm="slaney", mel_scale="slaney",
        )
        self.mel_filters = torch.tensor(filters, dtype=torch.float32)
        self.window = torch.hann_window(config.n_fft)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        return torch.clamp((sample_lengths - n_fft) // hop + 1, min=0)

    @float32_under_autocast
    def forward(self, waveform: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        if waveform.shape[-1] < n_fft:
            waveform = nn.functional.pad(waveform, (0, n_fft - waveform.shape[-1]))
            mask = nn.functional.pad(mask, (0, n_fft - mask.shape[-1]))
        spec = torch.stft(waveform * mask, n_fft, hop, n_fft, self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, freq, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel_filters)  # (B, frames, mels)
        logmel = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        lengths = self.frame_lengths(mask.sum(-1))
        frame_mask = torch.arange(logmel.shape[1], device=logmel.device)[None, :] < lengths[:, None]
        weight = frame_mask[..., None].to(logmel.dtype)
        if self.config.normalize == "instance":
            count = torch.clamp(weight.sum((1, 2)) * logmel.shape[2], min=1.0)
            mean = (logmel * weight).sum((1, 2)) / count
            var = (((logmel - mean[:, None, None]) * weight) ** 2).sum((1, 2)) / count
            logmel = (logmel - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        if self.training and self.config.spec_augment is not None:
            logmel = self._spec_augment(logmel, lengths)
        return logmel * weight, frame_mask

    def _spec_augment(self, logmel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cfg = self.config.spec_augment
        batch, frames, mels = logmel.shape
        keep = torch.ones_like(logmel)
        time_axis = torch.arange(frames, device=logmel.device)
        mel_axis = torch.arange(mels, device=logmel.device)
        for b in range(batch):
            n = int(lengths[b])
            for _ in range(cfg.time_masks):
                width = int(torch.randint(0, max(1, int(cfg.time_width * n)) + 1, ()))
                start = int(torch.randint(0, max(1, n - width + 1), ()))
                keep[b, (time_axis >= start) & (time_axis < start + width), :] = 0
            for _ in range(cfg.freq_masks):
                width = int(torch.randint(0, cfg.freq_width + 1, ()))
                start = int(torch.randint(0, max(1, mels - width + 1), ()))
                keep[b, :, (mel_axis >= start) & (mel_axis < start + width)] = 0
        return logmel * keep  # masked cells take the utterance mean (0 after normalisation)


class WaveformNormalize(nn.Module):
    """Zero mean, unit variance per utterance over its valid samples (what wav2vec 2.0 expects)."""

    def forward(self, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.to(waveform.dtype)
        count = torch.clamp(weight.sum(-1, keepdim=True), min=1.0)
        mean = (waveform * weight).sum(-1, keepdim=True) / count
        var = (((waveform - mean) * weight) ** 2).sum(-1, keepdim=True) / count
        return (waveform - mean) / torch.sqrt(var + 1e-7) * weight
