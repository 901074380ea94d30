"""Representation analysis: layer-wise probes (and, in later releases, model comparisons)."""
