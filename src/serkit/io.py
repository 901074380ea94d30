"""Atomic outputs: nothing serkit writes is ever half-written, and nothing existing is overwritten."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serkit.errors import DiskFullError, SerkitError


def refuse_existing(path: Path, what: str = "output") -> None:
    """Raise if `path` exists: serkit never overwrites a user's model, data or results."""
    if path.exists():
        raise SerkitError(
            f"{what} {path} already exists; serkit never overwrites: choose another output path "
            "or remove it yourself"
        )


def check_writable(path: Path | str, what: str = "output") -> None:
    """Raise now, before any work, unless `path` can be created: its nearest existing folder must
    take a new file. Tried rather than asked: os.access says yes to root everywhere, /proc included."""
    path = Path(path)
    parent = nearest_existing(path.parent)
    try:
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError:
        raise SerkitError(f"cannot write {what} {path}: {parent} is not a writable folder; choose another output path") from None


def check_new_file(path: Path | str, what: str = "output") -> None:
    """The checks `atomic_file` makes, for a command to make first: `path` is new and can be written."""
    refuse_existing(Path(path), what)
    check_writable(path, what)


def _no_space(exc: BaseException) -> bool:
    return isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)


def _disk_full(what: str, path: Path) -> DiskFullError:
    return DiskFullError(f"no space left on device while writing {what} {path}; nothing was written: free some space "
                         "(or choose an output on another disk) and run again")


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w", overwrite: bool = False, what: str = "output") -> Iterator:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    if not overwrite:
        refuse_existing(path, what)
    check_writable(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _no_space(exc):
            raise _disk_full(what, path) from None
        raise


class OutputDir:
    """A new output directory, made whole or not at all, that no other run can take meanwhile.

    Entering takes a lock beside `path` (`.NAME.lock`, held until exit), so a second serkit run
    aimed at the same output fails at once instead of replacing the first one's result at the
    end. It then checks the rules a user relies on before any work starts: `path` is not there
    (or, with `overwrite`, is an output `recognise` accepts as serkit's own), and its folder can be
    written. Leftovers of crashed runs (`.NAME.<8 random characters>.partial` and `.old`) are removed
    (while the lock is held they belong to no live run), except an old output a crash left half
    replaced, which is put back. `staging()` gives the folder to write into;
    `commit()` renames it to `path` (never onto something that appeared meanwhile); leaving the
    block without committing, or by an exception, removes it.
    """

    def __init__(self, path: Path | str, overwrite: bool = False, recognise=None, what: str = "output"):
        self.path = Path(path)
        self.overwrite, self.recognise, self.what = overwrite, recognise, what
        self._lock = None
        self._staging: Path | None = None

    def __enter__(self) -> OutputDir:
        self.check_rules()
        check_writable(self.path, self.what)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SerkitError(f"cannot create the folder of {self.what} {self.path} ({exc.strerror}); choose another output path") from None
        self._lock = _Lock(self.path.with_name(f".{self.path.name}.lock"), f"{self.what} {self.path}")
        self._lock.acquire()
        try:
            self._recover_or_clear_leftovers()
            self.check_rules()  # again, now that no other serkit run can change the answer
        except BaseException:
            self._lock.release()
            raise
        return self

    def _recover_or_clear_leftovers(self) -> None:
        """A run that died while replacing `path` left the old output in `.NAME.<8 random characters>.old/previous`: put it
        back. Every other working folder of this output belongs to no live run (we hold the lock)."""
        pattern = re.compile(rf"\.{re.escape(self.path.name)}(\.[a-z0-9_]{{8}})?\.(partial|old)")  # mkdtemp's 8 characters;
        leftovers = sorted(p for p in self.path.parent.iterdir() if pattern.fullmatch(p.name))  # none: serkit 0.1's names
        if not self.path.exists() and not self.path.is_symlink():
            for old in leftovers:
                if old.name.endswith(".old") and (old / "previous").is_dir():
                    os.rename(old / "previous", self.path)
                    break
        for stale in leftovers:
            shutil.rmtree(stale, ignore_errors=True)

    def check_rules(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return
        if not self.overwrite:
            raise SerkitError(f"{self.what} {self.path} already exists; serkit never overwrites: choose another output path"
                              + (", or pass --overwrite to replace it" if self.recognise else " or remove it yourself"))
        if self.recognise is None or not self.path.is_dir() or not self.recognise(self.path):
            raise SerkitError(f"{self.what} {self.path} exists and is not a serkit output of this kind, so --overwrite "
                              "will not delete it; choose another output path")

    def staging(self) -> Path:
        """The working folder: private (0700) while it is written, an ordinary folder once committed."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        return self._staging

    def commit(self) -> Path:
        staging = self.staging()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        if self.path.exists() or self.path.is_symlink():
            try:
                self.check_rules()
            except SerkitError as exc:
                raise SerkitError(f"{exc} (it appeared while this run was working; nothing was replaced)") from None
            trash = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.rename(self.path, trash / "previous")
            try:
                _rename_noreplace(staging, self.path, self.what)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rename(trash / "previous", self.path)  # put the old output back
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _rename_noreplace(staging, self.path, self.what)
        self._staging = None
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None
        finally:
            if self._lock is not None:
                self._lock.release()
        if exc is not None and _no_space(exc):  # named after this output, not a file in its working folder
            raise _disk_full(self.what, self.path) from None


@contextlib.contextmanager
def atomic_dir(path: Path | str, overwrite: bool = False, recognise=None, what: str = "output") -> Iterator[Path]:
    """Yield a temporary directory beside `path`; rename it to `path` only if the block succeeds.

    `path` must not exist (or be replaceable, see OutputDir): an output directory is created whole
    or not at all.
    """
    with OutputDir(path, overwrite, recognise, what) as out:
        yield out.staging()
        out.commit()


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class _Lock:
    """An exclusive, non-blocking flock on a file beside an output; the file is removed on release."""

    def __init__(self, file: Path, what: str):
        self.file, self.what, self.fd = file, what, None

    def acquire(self) -> None:
        import fcntl

        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SerkitError(f"cannot write {self.what}: cannot create {self.file} ({exc.strerror}); "
                                  "choose another output path") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SerkitError(f"another serkit run is writing {self.what} right now; wait for it to finish, "
                                  "or choose another output path") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                if os.fstat(fd).st_ino == os.stat(self.file).st_ino:
                    self.fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file)
        os.close(self.fd)
        self.fd = None


def _rename_noreplace(src: Path, dst: Path, what: str) -> None:
    """rename(2) replaces an empty directory silently; renameat2(RENAME_NOREPLACE) refuses any target."""
    libc = _libc()
    if libc is not None:
        AT_FDCWD, RENAME_NOREPLACE = -100, 1
        if libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise SerkitError(f"{what} {dst} appeared while this run was working; nothing was replaced")
        if err not in (errno.ENOSYS, errno.EINVAL):  # a file system without RENAME_NOREPLACE falls back below
            raise OSError(err, os.strerror(err), str(dst))
    if dst.exists():
        raise SerkitError(f"{what} {dst} appeared while this run was working; nothing was replaced")
    os.rename(src, dst)


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


def write_json(path: Path | str, obj, overwrite: bool = False, what: str = "output") -> None:
    with atomic_file(path, "w", overwrite=overwrite, what=what) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(path: Path | str, text: str, overwrite: bool = False, what: str = "output") -> None:
    with atomic_file(path, "w", overwrite=overwrite, what=what) as handle:
        handle.write(text)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
