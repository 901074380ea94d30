"""Errors a user can act on.

Every error serkit raises on bad input is a `SerkitError` whose message is one line that names the
file or field at fault and says what to do. The CLI prints it without a traceback.
"""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception's message cut to its first line, for a one-line error that names its type."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:limit]}"


class SerkitError(Exception):
    """Base class: a problem with the user's input, with a fix in the message."""


class AudioError(SerkitError):
    """An audio file is missing, unreadable, truncated, empty or silent."""


class ManifestError(SerkitError):
    """A manifest is missing columns, has duplicate paths or unknown labels."""


class SplitError(SerkitError):
    """A split file is malformed or leaks speakers between its parts."""


class ModelDirError(SerkitError):
    """A model directory is missing files, has a bad config, or is not safetensors."""


class ConfigError(SerkitError):
    """A recipe or a --set override is invalid."""


class DiskFullError(SerkitError):
    """The disk filled up while an output was written; nothing of that output is left behind."""
