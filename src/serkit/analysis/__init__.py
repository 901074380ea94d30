"""Representation analysis: layer-wise probes, model comparisons, attention distances (paper 002)."""
