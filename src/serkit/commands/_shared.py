"""What the command modules share: the consoles, how a note or an error is printed, output formats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# soft_wrap: long paths and tables of figures stay on one line when piped into a file or grep
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_note(kind: str, message: str) -> None:
    """One line on stderr: 'warning: ...' (in yellow) or 'note: ...'."""
    style = "bold yellow" if kind == "warning" else "bold"
    err_console.print(f"[{style}]{kind}:[/] {escape(message)}", highlight=False, soft_wrap=True)


# the long-recording options of predict, evaluate and embed
SEGMENTS = typer.Option("fixed", "--segments", help="long recordings: fixed (windows) or vad (speech regions, silero-vad)")
WINDOW = typer.Option(None, help="long recordings: window seconds (default: the model's fixed length, else 4)")
HOP = typer.Option(None, help="long recordings: seconds between windows (default: half a window)")


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, float], None]]:
    """A bar for a step that takes more than a few seconds (gone when it ends); yields `update(done, total)`."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
