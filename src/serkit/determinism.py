"""Bit-identical reruns on one machine: seeded global RNGs, deterministic kernels, a fixed thread count.

Everything serkit draws itself comes from seeded generators; what it cannot seed that way is
dropout, which draws from torch's global generator. On CPU, PyTorch's kernels give the same bits
for the same inputs and thread count; on CUDA, cuBLAS and cuDNN need to be told
(CUBLAS_WORKSPACE_CONFIG, cudnn.deterministic). The previous global state is restored on exit, so
a library caller's own seeding is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Determinism:
    """What a reproducible block found: operations that ran without a deterministic implementation."""

    nondeterministic_ops: list[str] = field(default_factory=list)


@contextlib.contextmanager
def reproducible(seed: int, threads: int | None = None, deterministic: bool = True) -> Iterator[Determinism]:
    """Seed, pin the threads and ask for deterministic kernels for the block; restore it all afterwards.

    An operation with no deterministic implementation (some CUDA backward passes) warns instead of
    failing the run; the block's result lists it, so a receipt can say that bit-identity is not assured."""
    saved = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy_rng": np.random.get_state(),
        "algorithms": (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "threads": torch.get_num_threads(),
        "python_rng": random.getstate(),
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    found = Determinism()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if threads is not None and threads > 0:
                torch.set_num_threads(threads)
            if deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            # TF32 matmuls round differently from float32 ones; a caller (or Lightning) may have turned them on
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
            torch.set_float32_matmul_precision("highest")
            torch.manual_seed(seed)  # seeds CUDA too
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield found
        finally:
            torch.set_rng_state(saved["torch_rng"])
            if saved["cuda_rng"] is not None:
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            np.random.set_state(saved["numpy_rng"])
            torch.use_deterministic_algorithms(saved["algorithms"][0], warn_only=saved["algorithms"][1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved["cudnn"]
            torch.set_num_threads(saved["threads"])
            random.setstate(saved["python_rng"])
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved["tf32"]
            torch.set_float32_matmul_precision(saved["matmul_precision"])
    for w in caught:
        text = str(w.message)
        if "deterministic" in text and "implementation" in text:
            found.nondeterministic_ops.append(text.split(".")[0][:200])
        else:  # everything else goes on to the caller's filters, as if never caught
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
