"""Evaluation of a saved model on a manifest: classification (UAR, confusion) and regression (CCC)."""
