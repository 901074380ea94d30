"""Targeted PGD in the waveform domain: the adversarial set that keeps a model's knowledge.

For each forget utterance x and each of its M targets y~ != y: start at x + U(-tau, tau), then P
steps of x~ <- clip(x~ - sigma * sign(grad CE(f(x~), y~)), x - tau, x + tau), i.e. descend the loss
toward the target (papers 000/001, Eq. 2, with the sign that makes a *targeted* attack). The model
is in eval mode, padding is masked out, and all M targets of a batch of utterances run in one pass.
A sample stops moving once the model assigns it its target (`early_stop`): further steps only cost
time. tau is either absolute (on the waveform the model sees) or relative to each utterance's
standard deviation (`tau_mode="relative"`), which makes one value fit corpora of different levels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import pad_batch


@dataclass
class AdversarialSet:
    """Adversarial waveforms with their target labels and the attack's statistics."""

    waves: list[np.ndarray]
    targets: np.ndarray  # (N * M,)
    source_index: np.ndarray  # which forget utterance each sample comes from
    success: np.ndarray  # model predicted the target at the end
    snr_db: np.ndarray
    steps_taken: np.ndarray
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.waves)

    def summary(self) -> dict:
        return {
            "samples": len(self),
            "target_success_rate": float(self.success.mean()) if len(self) else 0.0,
            "snr_db_median": float(np.median(self.snr_db)) if len(self) else None,
            "snr_db_min": float(np.min(self.snr_db)) if len(self) else None,
            "mean_steps": float(self.steps_taken.mean()) if len(self) else 0.0,
            "seconds": round(self.seconds, 2),
            "utterance_steps_per_s": round(float(self.steps_taken.sum()) / self.seconds, 1) if self.seconds else None,
            **self.stats,
        }


class TargetedPGD:
    """Targeted projected gradient descent on waveforms (one small class, torchattacks-style)."""

    def __init__(self, tau: float = 0.01, sigma: float | None = None, steps: int = 50, tau_mode: str = "relative",
                 random_start: bool = True, early_stop: bool = True, batch_size: int = 32, seed: int = 0):
        if tau <= 0 or steps < 1:
            raise ValueError("PGD needs tau > 0 and steps >= 1")
        if tau_mode not in ("relative", "absolute"):
            raise ValueError("tau_mode must be 'relative' (x the utterance's std) or 'absolute'")
        self.tau, self.steps, self.tau_mode = tau, steps, tau_mode
        # the common choice: a step that can cross the whole ball in a fraction of the steps
        self.sigma = sigma if sigma is not None else 2.5 * tau / steps
        self.random_start, self.early_stop = random_start, early_stop
        self.batch_size, self.seed = batch_size, seed

    def params(self) -> dict:
        return {"tau": self.tau, "tau_mode": self.tau_mode, "sigma": self.sigma, "steps": self.steps,
                "random_start": self.random_start, "early_stop": self.early_stop, "batch_size": self.batch_size}

    def generate(self, model: nn.Module, waves: list[np.ndarray], targets: np.ndarray) -> AdversarialSet:
        """`targets` is (N, M): M target labels per utterance. Returns N * M adversarial samples."""
        targets = np.asarray(targets)
        n, m = targets.shape
        flat_source = np.repeat(np.arange(n), m)
        flat_targets = targets.reshape(-1)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        grads_on = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)  # only the input needs a gradient
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out_waves: list[np.ndarray] = [None] * len(flat_source)
        success = np.zeros(len(flat_source), dtype=bool)
        steps_taken = np.zeros(len(flat_source), dtype=np.int64)
        snr = np.zeros(len(flat_source))
        start = time.perf_counter()
        # longest first keeps padding small within each batch
        order = sorted(range(len(flat_source)), key=lambda i: -waves[flat_source[i]].shape[0])
        try:
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                clean, mask = pad_batch([waves[flat_source[i]] for i in idx])
                clean, mask = clean.to(device), mask.to(device)
                weight = mask.to(clean.dtype)
                if self.tau_mode == "relative":
                    count = weight.sum(-1, keepdim=True)
                    mean = (clean * weight).sum(-1, keepdim=True) / count
                    std = torch.sqrt((((clean - mean) * weight) ** 2).sum(-1, keepdim=True) / count)
                    scale = std
                else:
                    scale = torch.ones(len(idx), 1, device=device)
                tau, sigma = self.tau * scale, self.sigma * scale
                y = torch.as_tensor(flat_targets[idx], device=device)
                x = clean.clone()
                if self.random_start:
                    noise = (torch.rand(clean.shape, generator=gen) * 2 - 1).to(device)
                    x = clean + noise * tau
                x = x * weight
                active = torch.arange(len(idx), device=device)  # rows still short of their target
                taken = torch.zeros(len(idx), dtype=torch.long, device=device)
                x = x.detach()
                for _ in range(self.steps):
                    # only rows still attacking are computed: cost falls as targets are reached
                    xa = x[active].requires_grad_(True)
                    logits = model(xa, mask[active])
                    if self.early_stop:
                        keep = logits.argmax(-1) != y[active]
                        if not keep.any():
                            break
                        active, xa_kept, logits = active[keep], xa, logits[keep]
                        loss = nn.functional.cross_entropy(logits, y[active], reduction="sum")
                        (grad,) = torch.autograd.grad(loss, xa_kept)
                        grad = grad[keep]
                    else:
                        loss = nn.functional.cross_entropy(logits, y[active], reduction="sum")
                        (grad,) = torch.autograd.grad(loss, xa)
                    with torch.no_grad():
                        stepped = x[active] - sigma[active] * grad.sign()
                        bounded = torch.max(torch.min(stepped, clean[active] + tau[active]), clean[active] - tau[active])
                        x[active] = bounded * weight[active]
                    taken[active] += 1
                x = x.detach()
                with torch.no_grad():
                    reached = model(x, mask).argmax(-1) == y
                for row, i in enumerate(idx):
                    length = int(mask[row].sum())
                    adv = x[row, :length].cpu().numpy()
                    ref = clean[row, :length].cpu().numpy()
                    noise_power = float(np.mean((adv - ref) ** 2))
                    snr[i] = 10 * math.log10(float(np.mean(ref ** 2)) / noise_power) if noise_power > 0 else float("inf")
                    out_waves[i] = adv
                    success[i] = bool(reached[row])
                    steps_taken[i] = int(taken[row])
        finally:
            for p, on in zip(model.parameters(), grads_on):
                p.requires_grad_(on)
            model.train(was_training)
        return AdversarialSet(out_waves, flat_targets, flat_source, success, snr, steps_taken, time.perf_counter() - start)


def draw_targets(labels: np.ndarray, num_classes: int, per_sample: int, seed: int) -> np.ndarray:
    """For each true label, `per_sample` targets drawn uniformly from the other classes (seeded)."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, num_classes, size=(len(labels), per_sample))
    return (np.asarray(labels)[:, None] + offsets) % num_classes
