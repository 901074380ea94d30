"""The papers' method: random labels + targeted PGD samples (+ EWC with a forget-set Fisher).

Ren, Rammohan, Scheck and Schultz, "Machine Unlearning in Speech Emotion Recognition via Forget Set
Alone" (arXiv 2510.04251, 2025; papers 000/001), adapting L2UL (Cha et al., AAAI 2024; see l2ul.py).

`adv`: L = l1 * L_mis + l2 * L_adv. `adv-ewc` (the default for a model without stored head moments; else pgu.py): + l3 * L_ewc.
The adversarial set is generated from the original model, never from the one being changed:
M targets per forget utterance, each attacked with targeted PGD (see serkit.unlearning.pgd). By
default all N x M are made before the first step, as the papers describe it; `adversarial_generation:
on-demand` makes each when a training step first asks for it (the same samples, paid for only when
used, but in smaller, mixed-length batches: 1.22x the time at N = 10, 0.66x at N = 30, bench/RESULTS.md 27).
Training on (x~, y~) pairs keeps the decision regions around the forget utterances populated
by what the original model knew, without reading any remaining data.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from torch import nn

from serkit.errors import ConfigError
from serkit.unlearning.importance import AnchorPenalty, fisher_diagonal
from serkit.unlearning.methods.base import (
    FinetuneParams,
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    finetune,
    random_wrong_labels,
    register,
)
from serkit.unlearning.pgd import OnDemandAdversarial, TargetedPGD, draw_targets


class PGDParams(FinetuneParams):
    """The adversarial set's parameters, shared by every method that trains on targeted PGD samples."""

    adversarial_per_sample: int | None = Field(None, ge=1, description="M; default from the preset: 10 measured, "
                                               "20 paper")
    pgd_steps: int | None = Field(None, ge=1, description="P; default from the preset: 20 measured, 50 paper")
    tau: float = Field(0.01, gt=0, description="PGD bound; x the utterance's std when tau_mode is relative")
    tau_mode: Literal["relative", "absolute"] = "relative"
    sigma: float | None = Field(None, gt=0, description="PGD step (the first one with a schedule); default 2.5 * tau / P, "
                                "10 * tau / P with pgd_step_schedule cosine")
    pgd_step_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant: every step sigma; cosine: sigma * (1 + cos(pi t / P)) / 2 at step t, large "
        "steps first and small ones near the target (bench/RESULTS.md 36)")
    pgd_early_stop: bool = Field(True, description="stop attacking a sample once it reaches its target")
    pgd_batch_size: int = Field(32, ge=1)
    pgd_precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="the precision PGD's forward and backward run in (torch autocast; a log-Mel front end "
        "stays float32): bfloat16 is 1.6x faster on a CPU with AVX-512 BF16 and emulated (slower) on one without; it "
        "changes the samples (bench/RESULTS.md 35)")
    adversarial_keep: Literal["all", "successful"] = Field(
        "all", description="all: every sample with its target label (the papers); successful: only the samples the "
        "original model assigns to their target. A failed attack's sample is still, for the original model, its source "
        "utterance's class: labelling it with the target teaches wrong labels near the forget set")

    PRESETS: ClassVar[dict[str, dict]] = {
        "measured": {**FinetuneParams.PRESETS["measured"], "adversarial_per_sample": 10, "pgd_steps": 20},
        "paper": {**FinetuneParams.PRESETS["paper"], "adversarial_per_sample": 20, "pgd_steps": 50}}


class AdvParams(PGDParams):
    adversarial_generation: Literal["upfront", "on-demand"] = Field(
        "upfront", description="upfront: all N x M PGD samples before the first step (the papers); on-demand: each is "
        "made (from a frozen copy of the original model) when a training step first uses it, so a request that stops "
        "early pays only for what it used, in smaller batches (1.22x the time at N = 10, 0.66x at N = 30: bench/RESULTS.md 27). The same samples "
        "either way; adversarial_keep=successful needs upfront")
    lambda_mis: float = Field(0.1, ge=0, description="l1 (papers: 0.1)")
    lambda_adv: float = Field(1.0, ge=0, description="l2 (papers: 1)")

    @model_validator(mode="after")
    def _successful_needs_upfront(self):
        if self.adversarial_keep == "successful" and self.adversarial_generation == "on-demand":
            raise ValueError("adversarial_keep=successful keeps the samples that reached their target, known only "
                             "once all are made: use adversarial_generation=upfront")
        return self


class AdvEWCParams(AdvParams):
    lambda_ewc: float = Field(1e3, ge=0, description="l3 (papers: 1e3)")
    fisher_labels: Literal["random", "true", "predicted"] = Field("random", description="labels of the Fisher's CE (papers: random)")
    fisher_normalize: bool = Field(False, description="divide F by its largest entry")


@register
class Adversarial(UnlearningMethod):
    name = "adv"
    Params = AdvParams

    def _pgd(self, ctx: UnlearnContext) -> tuple[TargetedPGD, np.ndarray]:
        p = self.params
        pgd = TargetedPGD(tau=p.tau, sigma=p.sigma, steps=p.pgd_steps, tau_mode=p.tau_mode,
                          early_stop=p.pgd_early_stop, batch_size=p.pgd_batch_size, seed=ctx.seed,
                          precision=p.pgd_precision, step_schedule=p.pgd_step_schedule)
        return pgd, draw_targets(ctx.forget_labels, len(ctx.saved.labels), p.adversarial_per_sample, ctx.seed + 1)

    def _attack(self, ctx: UnlearnContext):
        p = self.params
        pgd, targets = self._pgd(ctx)
        with ctx.steps("PGD samples") as update:
            adversarial = pgd.generate(ctx.saved.model, ctx.forget_waves, targets, progress=update)
        summary = adversarial.summary()
        ctx.log(f"PGD: {summary['samples']} adversarial samples in {summary['seconds']:.0f} s, "
                f"target success {summary['target_success_rate']:.0%}, median SNR {summary['snr_db_median']:.1f} dB")
        stats = {"pgd": {**pgd.params(), **summary}, "adversarial_keep": p.adversarial_keep}
        waves, targets = adversarial.waves, adversarial.targets
        if p.adversarial_keep == "successful":
            keep = np.flatnonzero(adversarial.success)
            if not len(keep):
                raise ConfigError(f"adversarial_keep=successful: none of the {len(adversarial)} PGD samples reached its "
                                  f"target (tau {p.tau:g}, {p.pgd_steps} steps); raise tau or pgd_steps, or use "
                                  "adversarial_keep=all")
            waves, targets = [waves[i] for i in keep], targets[keep]
            ctx.log(f"training on the {len(keep)} successful adversarial samples of {len(adversarial)}")
        stats["adversarial_used"] = len(waves)
        return (waves, targets), stats

    def _penalty(self, ctx: UnlearnContext, wrong):
        return None, {}

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        p = self.params
        wrong = random_wrong_labels(ctx.forget_labels, len(ctx.saved.labels), ctx.seed)
        on_demand = p.adversarial_generation == "on-demand"
        if on_demand:
            pgd, targets = self._pgd(ctx)
            adversarial, stats = None, {"adversarial_keep": p.adversarial_keep}
        else:
            adversarial, stats = self._attack(ctx)
        penalty, penalty_stats = self._penalty(ctx, wrong)  # before any weight changes, as the copy below

        def loss_fn(model, forget, extra):
            x, mask, y = forget
            l_mis = nn.functional.cross_entropy(model(x, mask), y)
            ax, amask, ay = extra
            l_adv = nn.functional.cross_entropy(model(ax, amask), ay)
            loss = p.lambda_mis * l_mis + p.lambda_adv * l_adv
            parts = {"L_mis": l_mis.detach(), "L_adv": l_adv.detach()}
            if penalty is not None:
                l_ewc = penalty(model)
                loss = loss + p.lambda_ewc * l_ewc
                parts["L_ewc"] = l_ewc.detach()
            return loss, parts

        lr = p.learning_rate(ctx.saved)
        if not on_demand:
            run = finetune(ctx, p, wrong, adversarial, loss_fn, lr)
        else:
            with ctx.steps("PGD samples (made as steps use them)") as update:
                adversarial = OnDemandAdversarial(pgd, ctx.saved.model, ctx.forget_waves, targets, progress=update)
                run = finetune(ctx, p, wrong, adversarial, loss_fn, lr)
            summary = adversarial.summary()
            ctx.log(f"PGD: {summary['samples']} of {summary['samples_planned']} adversarial samples made as the steps "
                    f"used them, in {summary['seconds']:.0f} s, target success {summary['target_success_rate']:.0%}")
            stats = {**stats, "pgd": {**pgd.params(), **summary}, "adversarial_used": summary["samples"]}
        return UnlearnOutcome({"method": self.name, **stats, **penalty_stats, **run})


@register
class AdversarialEWC(Adversarial):
    name = "adv-ewc"
    Params = AdvEWCParams

    def _penalty(self, ctx: UnlearnContext, wrong):
        p = self.params
        if p.fisher_labels == "random":
            labels = wrong
        elif p.fisher_labels == "true":
            labels = ctx.forget_labels
        else:
            from serkit.inference.predict import predict_proba

            labels = predict_proba(ctx.saved.model, ctx.forget_waves).argmax(1)
        fisher = fisher_diagonal(ctx.saved.model, ctx.forget_waves, labels, normalize=p.fisher_normalize)
        penalty = AnchorPenalty(ctx.saved.model, fisher)
        return penalty, {"ewc": {"fisher_labels": p.fisher_labels, "fisher_normalize": p.fisher_normalize, **penalty.stats()}}
