"""Supervised training: one engine (seed, data parts, Lightning trainer, keep-best, provenance, a run
folder written whole or not at all) and the tasks plugged into it.

- `serkit.training.engine`: `train(recipe)`, the run folder, what a saved model records.
- `serkit.training.parts`: the recipe's split, its parts and their decoded audio.
- `serkit.training.module`: the LightningModule every task trains with, Adam, keep-best.
- `serkit.training.classification`: emotion categories, cross-entropy, validation UAR.
- `serkit.training.regression`: arousal/valence/dominance (paper 004), 1 − CCC, validation CCC.

Neural structured learning (paper 003) joins as a loss hook from `serkit.transfer.nsl`.
"""

from serkit.training.engine import TrainResult, initialise_from, run_output, run_provenance, train
from serkit.training.module import KeepBest, TaskModule, adam
from serkit.training.parts import check_part_lengths, load_part_waves, load_parts

__all__ = ["KeepBest", "TaskModule", "TrainResult", "adam", "check_part_lengths", "initialise_from", "load_part_waves",
           "load_parts", "run_output", "run_provenance", "train"]
