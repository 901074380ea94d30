"""serkit: speech emotion recognition that respects privacy and small devices."""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000
