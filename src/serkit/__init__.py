"""serkit: speech emotion recognition that respects privacy and small devices.

The Python API (serkit.api) is here by name: serkit.train, serkit.predict, serkit.evaluate, serkit.forget,
serkit.load. They are imported on first use, so `import serkit` stays instant.
"""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000

_API = ("train", "predict", "evaluate", "forget", "load", "Prediction", "Evaluation")
__all__ = ["SAMPLE_RATE", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("serkit.api"), name)  # by name: the package's init imports no module
    raise AttributeError(f"module 'serkit' has no attribute {name!r}")


from serkit.hf.hook import install as _install_transformers_hook  # noqa: E402  (cheap: transformers is not imported)

_install_transformers_hook()
