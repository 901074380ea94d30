"""Dimensional SER from audio and text (paper 004): targets, transcripts, ASR and the paper's grid.

Training is `serkit.training` with `task: regression` (serkit.training.regression); evaluation is
serkit.evaluation.regression; the audio + text model is serkit.models.audiotext."""
