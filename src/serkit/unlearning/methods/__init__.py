"""Unlearning methods: one small class each, in a registry, sharing one evaluation."""

from serkit.unlearning.methods.base import METHODS, UnlearnContext, UnlearningMethod, get_method, method_class

__all__ = ["METHODS", "UnlearnContext", "UnlearningMethod", "get_method", "method_class"]
