"""Hiding commitments to the utterances of a deletion request.

An utterance is identified by the SHA-256 of its audio file's bytes: what was actually processed,
whatever the file is called and wherever it lies, so a renamed or moved copy still matches and a
re-encoded one does not. That digest is never written anywhere. A receipt holds only
HMAC-SHA256(request key, digest) under a random 256-bit key drawn for the request (Python's
`hmac` and `secrets`). HMAC under an unknown key is a pseudorandom function: someone holding the
whole corpus cannot test a guess against a commitment (unlike a plain hash of a speaker id or file
name, which anyone can recompute). With the key and the files, anyone can check that exactly these
files were processed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from serkit.errors import SerkitError
from serkit.io import sha256_file

SCHEME = "HMAC-SHA256(request key, SHA-256 of the audio file's bytes)"
_DOMAIN = b"serkit-forget-utterance-v1\x00"  # so these MACs mean nothing in any other protocol


def new_key() -> bytes:
    return secrets.token_bytes(32)


def utterance_digest(path: Path | str) -> bytes:
    path = Path(path)
    try:
        return bytes.fromhex(sha256_file(path))
    except IsADirectoryError:
        raise SerkitError(f"{path} is a folder; name audio files") from None
    except OSError as exc:
        raise SerkitError(f"cannot read {path} ({exc.strerror}); the forget set's audio must be readable") from None


def commit(key: bytes, digest: bytes) -> str:
    return hmac.new(key, _DOMAIN + digest, hashlib.sha256).hexdigest()


def commitments(key: bytes, digests: list[bytes]) -> list[str]:
    """Sorted, so their order says nothing about the order of the files."""
    return sorted(commit(key, d) for d in digests)


def compare(committed: list[str], key: bytes, digests: list[bytes]) -> tuple[int, int]:
    """(committed utterances missing from the files, files that are not committed)."""
    given = {commit(key, d) for d in digests}
    held = set(committed)
    return len(held - given), len(given - held)
