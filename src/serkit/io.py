"""Atomic outputs: nothing serkit writes is ever half-written, and nothing existing is overwritten."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serkit.errors import SerkitError


def refuse_existing(path: Path, what: str = "output") -> None:
    """Raise if `path` exists: serkit never overwrites a user's model, data or results."""
    if path.exists():
        raise SerkitError(
            f"{what} {path} already exists; serkit never overwrites: choose another output path "
            "or remove it yourself"
        )


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w", overwrite: bool = False) -> Iterator:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if not overwrite:
        refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; rename it to `path` only if the block succeeds.

    `path` must not exist: an output directory is created whole or not at all.
    """
    path = Path(path)
    refuse_existing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path | str, obj, overwrite: bool = False) -> None:
    with atomic_file(path, "w", overwrite=overwrite) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(path: Path | str, text: str, overwrite: bool = False) -> None:
    with atomic_file(path, "w", overwrite=overwrite) as handle:
        handle.write(text)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
