"""The owner's secrets: the Ed25519 key that signs receipts, and the commitment keys of requests.

Both live in files only their owner can read (mode 0600): a key file that group or others can
read is refused, as ssh refuses one. The signing key is the standard PKCS #8 / SubjectPublicKeyInfo
PEM pair of the `cryptography` package, so `openssl pkey -in signing.key -pubout` reads it too.

The request keys file (`forget-keys.json`, written beside each forgotten model) holds, for every
deletion request in a model's lineage, the random key its utterances are committed under and
those commitments. It names no speaker and no file: with it the owner can refuse an utterance
that was already forgotten and prove to a data subject which utterances a request processed;
without it, the commitments in a receipt say nothing. Give a data subject only their own
request's key (`serkit keys extract`): with a key and the corpus anyone can tell which of the
corpus' utterances that request processed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from serkit.errors import SerkitError
from serkit.io import refuse_existing, write_text
from serkit.unlearning.commitments import commit

KEYS_FORMAT = "serkit-forget-keys"
KEYS_VERSION = 1
KEYS_FILE = "forget-keys.json"
SIGNING_KEY, PUBLIC_KEY = "signing.key", "signing.pub"


class KeyFileError(SerkitError):
    """A key file is missing, readable by others, or not in the expected format."""


class UnknownRequestError(KeyFileError):
    """A request keys file holds no key for the request asked for (another request's keys)."""


def write_private(path: Path | str, data: bytes, what: str = "key file") -> Path:
    """Write a new owner-only file (0600) atomically: no moment where others could read it."""
    path = Path(path)
    refuse_existing(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a key that a power cut loses is a receipt nobody can open
        os.link(tmp, path)  # unlike rename, never replaces a file that appeared meanwhile
        _fsync_folder(path.parent)
    except FileExistsError:
        raise KeyFileError(f"{what} {path} appeared while serkit was writing it; nothing was replaced") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private(path: Path | str, what: str, made_by: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{what} {path} not found" + (" (it is a folder)" if path.is_dir() else "")
                           + f"; give the file {made_by} wrote")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{what} {path} can be read by others (mode {mode:04o}); a secret must be the owner's alone: "
                           f"chmod 600 {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path} ({exc.strerror})") from None


# -- signing -------------------------------------------------------------------------------------

def new_signing_key(out_dir: Path | str) -> tuple[Path, Path]:
    """A new Ed25519 key pair: OUT/signing.key (private, 0600) and OUT/signing.pub."""
    out_dir = Path(out_dir)
    private, public = out_dir / SIGNING_KEY, out_dir / PUBLIC_KEY
    for path in (private, public):
        refuse_existing(path, "key file")
    key = Ed25519PrivateKey.generate()
    write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    write_text(public, public_pem(key.public_key()))
    return private, public


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    data = read_private(path, "signing key", "serkit keys new")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"signing key {path} is not an unencrypted PEM private key ({exc}); make one with "
                           "serkit keys new") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key; make one with serkit keys new")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"public key {path} not found; give the signing.pub written by serkit keys new")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"public key {path} is not a PEM public key ({exc}); give the signing.pub written by "
                           "serkit keys new") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"public key {path} is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, as ssh-keygen -l shows it: enough to tell keys apart."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw_public(key)).digest()).decode().rstrip("=")


def sign(key: Ed25519PrivateKey, message: bytes) -> dict:
    public = key.public_key()
    return {"algorithm": "ed25519", "public_key": base64.b64encode(raw_public(public)).decode(),
            "key_fingerprint": fingerprint(public), "value": base64.b64encode(key.sign(message)).decode()}


def signature_valid(signature: dict, message: bytes, public: Ed25519PublicKey) -> bool:
    try:
        public.verify(base64.b64decode(signature["value"], validate=True), message)
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False


def embedded_public_key(signature: dict) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(signature["public_key"], validate=True))
    except (ValueError, KeyError, TypeError):
        return None


# -- request keys ----------------------------------------------------------------------------------

@dataclass
class RequestKey:
    """One deletion request's commitment key and commitments (no identities)."""

    request_id: str
    index: int  # 1 for a model's first request
    key: str  # hex, 32 random bytes
    commitments: list[str]
    model_before: str  # weights SHA-256
    model_after: str
    receipt_sha256: str
    created_utc: str

    def commits_to(self, digest: bytes) -> bool:
        return commit(bytes.fromhex(self.key), digest) in self.commitments


@dataclass
class RequestKeys:
    """The request keys of one model lineage, oldest first."""

    requests: list[RequestKey] = field(default_factory=list)
    file: Path | None = None

    def __len__(self) -> int:
        return len(self.requests)

    def forgotten_by(self, digest: bytes) -> RequestKey | None:
        """The earlier request that already forgot this utterance, if any."""
        return next((r for r in self.requests if r.commits_to(digest)), None)

    def get(self, request_id: str) -> RequestKey:
        for r in self.requests:
            if r.request_id == request_id:
                return r
        where = f" {self.file}" if self.file else ""
        raise UnknownRequestError(f"request keys{where} hold no key for request {request_id[:12]}… (they cover requests "
                           f"{', '.join(r.request_id[:8] for r in self.requests) or 'none'}); give the keys file written "
                           "with that request or a later one of the same model")

    def up_to(self, model_weights_sha256: str) -> RequestKeys:
        """The requests up to the one that made this model (a later request's keys file holds them too)."""
        for i, r in enumerate(self.requests):
            if r.model_after == model_weights_sha256:
                return RequestKeys(self.requests[:i + 1], self.file)
        return self

    def before(self, index: int) -> RequestKeys:
        return RequestKeys([r for r in self.requests if r.index < index], self.file)

    def with_request(self, request: RequestKey) -> RequestKeys:
        return RequestKeys([*self.requests, request], None)

    def only(self, request_id: str) -> RequestKeys:
        return RequestKeys([self.get(request_id)], None)

    def to_bytes(self) -> bytes:
        payload = {"format": KEYS_FORMAT, "version": KEYS_VERSION,
                   "warning": "SECRET: with these keys and the corpus, anyone can tell whose utterances were forgotten. "
                              "Keep this file apart from the model and the receipts you share; give a data subject "
                              "only their own request's key (serkit keys extract).",
                   "requests": [asdict(r) for r in self.requests]}
        return (json.dumps(payload, indent=2) + "\n").encode()

    def save(self, path: Path | str) -> Path:
        return write_private(path, self.to_bytes())


def load_request_keys(path: Path | str) -> RequestKeys:
    path = Path(path)
    data = read_private(path, "request keys file", "serkit forget")
    try:
        payload = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyFileError(f"request keys file {path} is not JSON; give the {KEYS_FILE} serkit forget wrote") from None
    if not isinstance(payload, dict) or payload.get("format") != KEYS_FORMAT:
        raise KeyFileError(f"{path} is not a serkit request keys file (no \"format\": \"{KEYS_FORMAT}\"); give the "
                           f"{KEYS_FILE} serkit forget wrote")
    if payload.get("version") != KEYS_VERSION:
        raise KeyFileError(f"request keys file {path} has version {payload.get('version')!r}; this serkit reads "
                           f"version {KEYS_VERSION}")
    try:
        requests = [RequestKey(**r) for r in payload["requests"]]
        for r in requests:
            bytes.fromhex(r.key)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"request keys file {path} is damaged ({exc}); restore it from your backup") from None
    return RequestKeys(requests, path)
