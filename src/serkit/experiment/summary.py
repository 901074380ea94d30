"""How every grid's tables print a figure over several runs."""

from __future__ import annotations

import numpy as np


def mean_std(values, digits: int = 3) -> str:
    """"0.612 ± 0.031" over two or more runs (sample standard deviation); "0.612" for one run, whose
    spread is unknown, not zero."""
    values = np.asarray([float(v) for v in values], dtype=float)
    if len(values) == 0:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"
