"""PGD in the waveform domain: the adversarial sets that unlearning methods train on.

`TargetedPGD` (papers 000/001, L2UL): samples pushed towards chosen wrong classes.
`NearestAdversarial` (AMUN): for each utterance the closest misclassified waveform found.

Targeted PGD:
For each forget utterance x and each of its M targets y~ != y: start at x + U(-tau, tau), then P
steps of x~ <- clip(x~ - sigma * sign(grad CE(f(x~), y~)), x - tau, x + tau), i.e. descend the loss
toward the target (papers 000/001, Eq. 2, with the sign that makes a *targeted* attack). The model
is in eval mode, padding is masked out, and all M targets of a batch of utterances run in one pass.
A sample stops moving once the model assigns it its target (`early_stop`): further steps only cost
time. tau is either absolute (on the waveform the model sees) or relative to each utterance's
standard deviation (`tau_mode="relative"`), which makes one value fit corpora of different levels.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from serkit.data.dataset import pad_batch
from serkit.errors import SerkitError


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to give back this way
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back_freed_memory() -> None:
    """Return the pages glibc's allocator holds free to the system (bench/RESULTS.md 32, 32b). PGD drops rows as
    they reach their target, so its tensors take thousands of shapes; glibc keeps the large freed blocks in a
    heap that fragments, and a 100-utterance attack would otherwise hold twice the memory training takes."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# Also give pages back whenever a batch's active rows shrink, not only between batches: within one batch of the
# papers' fifty steps the new, smaller shapes cannot reuse the freed blocks whole (RESULTS 32c). A step of an
# unchanged shape reuses them, so trimming there too would only fault the same pages back in (32b: 1.34x time).
TRIM_WHEN_ROWS_DROP = True

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}

# The step at step t of P as a share of sigma. cosine: large steps while the sample is far from its target, small ones
# near it (cosine annealing, as learning rates; its mean share is 1/2, so sigma is the first step, not the mean).
STEP_SCHEDULES = {"constant": lambda t, steps: 1.0,
                  "cosine": lambda t, steps: 0.5 * (1 + math.cos(math.pi * t / steps))}


def autocast(precision: str, device: torch.device):
    """The context PGD's steps run in: torch autocast at `precision` (the log-Mel front ends keep float32 inside
    it: serkit.models.frontends.float32_under_autocast), or nothing for float32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SerkitError(f"pgd_precision={precision}: this GPU has no {precision}; use float32")
    return torch.autocast(device.type, dtype=dtype)


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
        snr = self.snr_db[np.isfinite(self.snr_db)]  # an unchanged sample (nothing to attack) has no SNR
        return {
            "samples": len(self),
            "target_success_rate": float(self.success.mean()) if len(self) else 0.0,
            "snr_db_median": float(np.median(snr)) if len(snr) else None,
            "snr_db_min": float(np.min(snr)) if len(snr) else None,
            "mean_steps": float(self.steps_taken.mean()) if len(self) else 0.0,
            "seconds": round(self.seconds, 2),
            "utterance_steps_per_s": round(float(self.steps_taken.sum()) / self.seconds, 1) if self.seconds else None,
            **self.stats,
        }


class TargetedPGD:
    """Targeted projected gradient descent on waveforms (one small class, torchattacks-style)."""

    def __init__(self, tau: float = 0.01, sigma: float | None = None, steps: int = 50, tau_mode: str = "relative",
                 random_start: bool = True, early_stop: bool = True, batch_size: int = 32, seed: int = 0,
                 max_padding: float = 1.0, precision: str = "float32", step_schedule: str = "constant"):
        if tau <= 0 or steps < 1:
            raise ValueError("PGD needs tau > 0 and steps >= 1")
        if step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"PGD step_schedule '{step_schedule}': choose {' or '.join(STEP_SCHEDULES)}")
        self.step_schedule = step_schedule
        if precision not in PRECISIONS:
            raise ValueError(f"PGD precision '{precision}': choose {' or '.join(PRECISIONS)}")
        self.precision = precision
        if tau_mode not in ("relative", "absolute"):
            raise ValueError("tau_mode must be 'relative' (x the utterance's std) or 'absolute'")
        self.tau, self.steps, self.tau_mode = tau, steps, tau_mode
        # the common choice: a step that can cross the whole ball in a fraction of the steps; a cosine schedule starts
        # at four times it (its mean step twice it: bench/RESULTS.md 36)
        self.sigma = sigma if sigma is not None else (2.5 if step_schedule == "constant" else 10.0) * tau / steps
        self.random_start, self.early_stop = random_start, early_stop
        self.batch_size, self.seed = batch_size, seed
        if not 0 <= max_padding <= 1:
            raise ValueError("max_padding is a share of a batch's longest sample, between 0 and 1")
        self.max_padding = max_padding

    def params(self) -> dict:
        return {"tau": self.tau, "tau_mode": self.tau_mode, "sigma": self.sigma, "steps": self.steps,
                "random_start": self.random_start, "early_stop": self.early_stop, "batch_size": self.batch_size,
                "precision": self.precision, "step_schedule": self.step_schedule}

    def generate(self, model: nn.Module, waves: list[np.ndarray], targets: np.ndarray,
                 progress: Callable[[int, int], None] | None = None) -> AdversarialSet:
        """`targets` is (N, M): M target labels per utterance. Returns N * M adversarial samples;
        `progress(done, total)` after each batch."""
        targets = np.asarray(targets)
        n, m = targets.shape
        return self.attack(model, waves, np.repeat(np.arange(n), m), targets.reshape(-1), np.arange(n * m), progress)

    def attack(self, model: nn.Module, waves: list[np.ndarray], flat_source: np.ndarray, flat_targets: np.ndarray,
               ids: np.ndarray, progress: Callable[[int, int], None] | None = None) -> AdversarialSet:
        """Attack `waves[flat_source[k]]` toward `flat_targets[k]`. Sample `ids[k]` always gets the same random
        start (seeded by the attack's seed and the id), so a sample is the same whether it is made with all
        the others or alone, when a training step first asks for it (OnDemandAdversarial)."""
        flat_source, flat_targets, ids = np.asarray(flat_source), np.asarray(flat_targets), np.asarray(ids)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        grads_on = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)  # only the input needs a gradient
        out_waves: list[np.ndarray] = [None] * len(flat_source)
        success = np.zeros(len(flat_source), dtype=bool)
        steps_taken = np.zeros(len(flat_source), dtype=np.int64)
        snr = np.zeros(len(flat_source))
        start = time.perf_counter()
        try:
            done = 0
            for idx in self.batches([waves[i].shape[0] for i in flat_source]):
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
                    noise = torch.zeros(clean.shape)
                    for row, i in enumerate(idx):
                        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + int(ids[i]))
                        length = int(mask[row].sum())
                        noise[row, :length] = torch.rand(length, generator=gen) * 2 - 1
                    x = clean + noise.to(device) * tau
                x = x * weight
                active = torch.arange(len(idx), device=device)  # rows still short of their target
                taken = torch.zeros(len(idx), dtype=torch.long, device=device)
                x = x.detach()
                with autocast(self.precision, device):
                    for t in range(self.steps):
                        rows = len(active)
                        share = STEP_SCHEDULES[self.step_schedule](t, self.steps)
                        active = self._step(model, x, clean, mask, weight, y, tau, sigma * share, active)
                        if active is None:
                            break
                        taken[active] += 1
                        if TRIM_WHEN_ROWS_DROP and len(active) < rows:  # the step's tensors are freed: its locals are gone
                            give_back_freed_memory()
                x = x.detach()
                with torch.no_grad():  # success as the float32 model the fine-tuning uses sees it
                    reached = model(x, mask).argmax(-1) == y
                for row, i in enumerate(idx):
                    length = int(mask[row].sum())
                    adv = x[row, :length].cpu().numpy().copy()  # not a view that keeps the padded batch alive
                    ref = clean[row, :length].cpu().numpy()
                    noise_power = float(np.mean((adv - ref) ** 2))
                    snr[i] = 10 * math.log10(float(np.mean(ref ** 2)) / noise_power) if noise_power > 0 else float("inf")
                    out_waves[i] = adv
                    success[i] = bool(reached[row])
                    steps_taken[i] = int(taken[row])
                done += len(idx)
                del x, clean, mask, weight  # the batch's tensors, before their pages go back
                give_back_freed_memory()
                if progress is not None:
                    progress(done, len(flat_source))
        finally:
            for p, on in zip(model.parameters(), grads_on):
                p.requires_grad_(on)
            model.train(was_training)
        return AdversarialSet(out_waves, flat_targets, flat_source, success, snr, steps_taken, time.perf_counter() - start)

    def _step(self, model: nn.Module, x: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
              y: torch.Tensor, tau: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor | None:
        """One signed-gradient step of the rows in `active`, in place in `x`; returns the rows that moved, or None
        when every row already has its target (early stop). Only rows still attacking are computed, so the cost
        falls as targets are reached."""
        xa = x[active].requires_grad_(True)
        logits = model(xa, mask[active]).float()  # the loss in float32 whatever precision the model ran in
        if self.early_stop:
            keep = logits.argmax(-1) != y[active]
            if not keep.any():
                return None
            active = active[keep]
            loss = nn.functional.cross_entropy(logits[keep], y[active], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            grad = grad[keep]
        else:
            loss = nn.functional.cross_entropy(logits, y[active], reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            stepped = x[active] - sigma[active] * grad.sign()
            x[active] = torch.max(torch.min(stepped, clean[active] + tau[active]), clean[active] - tau[active]) * weight[active]
        return active

    def batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices in batches of at most batch_size, longest first; a batch closes early where the next sample
        would pad it by more than max_padding of its longest (every padded sample costs the longest's time)."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and lengths[i] >= (1 - self.max_padding) * lengths[out[-1][0]]:
                out[-1].append(i)
            else:
                out.append([i])
        return out


class OnDemandAdversarial:
    """Targeted PGD samples made when a training step first asks for them, from a frozen copy of the
    original model: the same samples `TargetedPGD.generate` makes up front (each id keeps its random
    start), but a request that stops after a few steps pays only for the samples those steps used (PGD is
    80-94 % of a request made up front; bench/RESULTS.md 27). `take(indices)` gives (waves, targets)."""

    def __init__(self, pgd: TargetedPGD, model: nn.Module, waves: list[np.ndarray], targets: np.ndarray,
                 progress: Callable[[int, int], None] | None = None):
        import copy

        targets = np.asarray(targets)
        n, m = targets.shape
        self.pgd, self.waves, self.progress = pgd, waves, progress
        self.model = copy.deepcopy(model).eval()  # the original stays the attacked model while the other one trains
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.source_index, self.targets = np.repeat(np.arange(n), m), targets.reshape(-1)
        self.made: dict[int, np.ndarray] = {}
        self.success = np.zeros(n * m, dtype=bool)
        self.snr_db, self.steps_taken = np.full(n * m, np.nan), np.zeros(n * m, dtype=np.int64)
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, indices) -> tuple[list[np.ndarray], np.ndarray]:
        indices = np.asarray(indices)
        missing = np.array(sorted({int(i) for i in indices} - self.made.keys()), dtype=np.int64)
        if len(missing):
            made = self.pgd.attack(self.model, self.waves, self.source_index[missing], self.targets[missing], missing)
            for k, i in enumerate(missing):
                self.made[int(i)] = made.waves[k]
            self.success[missing], self.snr_db[missing], self.steps_taken[missing] = made.success, made.snr_db, made.steps_taken
            self.seconds += made.seconds
            if self.progress is not None:
                self.progress(len(self.made), len(self))
        return [self.made[int(i)] for i in indices], self.targets[indices]

    def summary(self) -> dict:
        done = np.array(sorted(self.made), dtype=np.int64)
        made = AdversarialSet([self.made[int(i)] for i in done], self.targets[done], self.source_index[done],
                              self.success[done], self.snr_db[done], self.steps_taken[done], self.seconds)
        return {**made.summary(), "samples_planned": len(self), "generation": "on demand"}


class NearestAdversarial:
    """Untargeted L2 PGD with a growing radius: each utterance's nearest misclassified neighbour (AMUN).

    Ebrahimpour-Boroojeny, Sundaram and Chandrasekaran (ICML 2025): raise the cross-entropy of the true
    label with L2-normalised gradient steps of eps/10, projected onto the L2 ball of radius eps, no random
    start; a sample leaves as soon as the model misclassifies it; after `steps` steps the radius of those
    still classified correctly doubles and the attack goes on from where it is (at most `max_doublings`
    times). The radius is relative to each utterance's L2 norm (eps 0.01: the perturbation is at least
    40 dB below the speech), as the papers' tau is relative to its standard deviation."""

    def __init__(self, eps: float = 0.005, steps: int = 50, max_doublings: int = 5, batch_size: int = 32):
        if eps <= 0 or steps < 1 or max_doublings < 0:
            raise ValueError("NearestAdversarial needs eps > 0, steps >= 1 and max_doublings >= 0")
        self.eps, self.steps, self.max_doublings, self.batch_size = eps, steps, max_doublings, batch_size

    def params(self) -> dict:
        return {"norm": "l2", "eps": self.eps, "eps_mode": "relative", "steps": self.steps,
                "max_doublings": self.max_doublings, "batch_size": self.batch_size}

    def generate(self, model: nn.Module, waves: list[np.ndarray], labels: np.ndarray,
                 progress: Callable[[int, int], None] | None = None) -> AdversarialSet:
        """One sample per utterance, labelled with the model's own prediction on it (`targets`);
        `progress(done, total)` after each batch."""
        labels = np.asarray(labels)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        grads_on = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        n = len(waves)
        out_waves: list[np.ndarray] = [None] * n
        predicted, success = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        steps_taken, snr, radius = np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)
        start = time.perf_counter()
        order = sorted(range(n), key=lambda i: -waves[i].shape[0])
        try:
            for b in range(0, n, self.batch_size):
                idx = order[b:b + self.batch_size]
                clean, mask = pad_batch([waves[i] for i in idx])
                clean, mask = clean.to(device), mask.to(device)
                weight = mask.to(clean.dtype)
                norm = torch.linalg.vector_norm(clean * weight, dim=-1, keepdim=True).clamp_min(1e-12)
                eps = self.eps * norm
                y = torch.as_tensor(labels[idx], device=device)
                x, taken = clean.clone(), torch.zeros(len(idx), dtype=torch.long, device=device)
                with torch.no_grad():
                    active = torch.nonzero(model(x, mask).argmax(-1) == y).flatten()  # already wrong: kept as is
                for _ in range(self.max_doublings + 1):
                    for _ in range(self.steps):
                        if not len(active):
                            break
                        xa = x[active].requires_grad_(True)
                        logits = model(xa, mask[active])
                        keep = logits.argmax(-1) == y[active]
                        if not keep.any():
                            active = active[keep]
                            break
                        loss = nn.functional.cross_entropy(logits[keep], y[active][keep], reduction="sum")
                        (grad,) = torch.autograd.grad(loss, xa)
                        active, grad = active[keep], grad[keep] * weight[active[keep]]
                        with torch.no_grad():
                            unit = grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(1e-20)
                            moved = x[active] + (eps[active] / 10) * unit - clean[active]
                            length = torch.linalg.vector_norm(moved, dim=-1, keepdim=True)
                            moved = moved * torch.clamp(eps[active] / length.clamp_min(1e-20), max=1.0)
                            x[active] = (clean[active] + moved) * weight[active]
                        taken[active] += 1
                    if not len(active):
                        break
                    eps[active] *= 2  # still right: a larger ball, from where the attack stands
                with torch.no_grad():
                    final = model(x, mask).argmax(-1)
                for row, i in enumerate(idx):
                    length = int(mask[row].sum())
                    adv, ref = x[row, :length].cpu().numpy().copy(), clean[row, :length].cpu().numpy()
                    noise_power = float(np.mean((adv - ref) ** 2))
                    snr[i] = 10 * math.log10(float(np.mean(ref ** 2)) / noise_power) if noise_power > 0 else float("inf")
                    out_waves[i], predicted[i] = adv, int(final[row])
                    success[i] = predicted[i] != labels[i]
                    steps_taken[i] = int(taken[row])
                    radius[i] = float(eps[row] / norm[row])
                del x, clean, mask, weight
                give_back_freed_memory()
                if progress is not None:
                    progress(min(b + self.batch_size, n), n)
        finally:
            for p, on in zip(model.parameters(), grads_on):
                p.requires_grad_(on)
            model.train(was_training)
        found = radius[success]
        stats = {"eps_median": float(np.median(found)) if len(found) else None}
        return AdversarialSet(out_waves, predicted, np.arange(n), success, snr, steps_taken,
                              time.perf_counter() - start, stats)


def draw_targets(labels: np.ndarray, num_classes: int, per_sample: int, seed: int) -> np.ndarray:
    """For each true label, `per_sample` targets drawn uniformly from the other classes (seeded)."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, num_classes, size=(len(labels), per_sample))
    return (np.asarray(labels)[:, None] + offsets) % num_classes
