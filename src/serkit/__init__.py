"""serkit: speech emotion recognition that respects privacy and small devices."""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000

from serkit.hf.hook import install as _install_transformers_hook  # noqa: E402  (cheap: transformers is not imported)

_install_transformers_hook()
