"""The serkit command line: the app and how its errors reach the user. The commands are in serkit.commands."""

from __future__ import annotations

import signal
import sys
import threading

import typer

from serkit.commands import register_all
from serkit.commands._shared import console, err_console, print_error
from serkit.errors import SerkitError

__all__ = ["app", "console", "err_console", "main", "run"]

app = typer.Typer(help="serkit: speech emotion recognition that respects privacy and small devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
register_all(app)


class Interrupted(BaseException):
    """SIGINT or SIGTERM. Not a KeyboardInterrupt: click and Lightning swallow those (printing
    "Aborted!" or exiting 1) before the output folders' cleanup and our message can run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; a SerkitError becomes one red line on stderr and exit code 2."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app(args=argv)  # typer handles usage errors itself and exits
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except SerkitError as exc:
        print_error(str(exc))
        return 2
    except OSError as exc:  # the last resort: each command turns the errors it expects into a SerkitError first
        print_error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc))
        return 2
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        err_console.print(f"interrupted ({signal.Signals(signum).name}); nothing was written")
        return 128 + signum
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
