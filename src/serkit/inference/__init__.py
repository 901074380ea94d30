"""Inference with a saved model: predictions, raw outputs, layer embeddings over a manifest."""
