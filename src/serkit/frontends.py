"""Differentiable front ends: the model's first layer, so gradients reach the waveform.

Both take a padded waveform batch (B, T) and its mask (B, T) and keep padding out of every
statistic, so an utterance gives the same features alone or in a padded batch.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers.audio_utils import mel_filter_bank


class LogMelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: int = 16_000
    n_fft: int = Field(512, description="window length in samples (paper 003: 512)")
    hop_length: int = Field(256, description="hop in samples (paper 003: 256)")
    n_mels: int = Field(64, description="mel bins (paper 003: 64)")
    f_min: float = 0.0
    f_max: float | None = None
    normalize: str = Field(
        "instance",
        description="'instance': zero mean, unit variance per utterance over its valid frames "
        "(cancels recording gain); 'none': raw log-Mel in dB",
    )


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
        f_max = config.f_max or config.sample_rate / 2
        filters = mel_filter_bank(
            num_frequency_bins=config.n_fft // 2 + 1, num_mel_filters=config.n_mels,
            min_frequency=config.f_min, max_frequency=f_max, sampling_rate=config.sample_rate,
            norm="slaney", mel_scale="slaney",
        )
        self.register_buffer("mel_filters", torch.tensor(filters, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        n_fft, hop = self.config.n_fft, self.config.hop_length
        return torch.clamp((sample_lengths - n_fft) // hop + 1, min=0)

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
        return logmel * weight, frame_mask


class WaveformNormalize(nn.Module):
    """Zero mean, unit variance per utterance over its valid samples (what wav2vec 2.0 expects)."""

    def forward(self, waveform: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = mask.to(waveform.dtype)
        count = torch.clamp(weight.sum(-1, keepdim=True), min=1.0)
        mean = (waveform * weight).sum(-1, keepdim=True) / count
        var = (((waveform - mean) * weight) ** 2).sum(-1, keepdim=True) / count
        return (waveform - mean) / torch.sqrt(var + 1e-7) * weight
