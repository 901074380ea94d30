"""Forget-set-only machine unlearning for SER (papers 000/001) and the evidence that it worked."""
