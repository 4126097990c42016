"""A shared rich progress bar on stderr; hidden when stderr is not a terminal (logs stay clean)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def progress_bar(transient: bool = True, enabled: bool = True) -> Progress:
    """`enabled=False` hides it (e.g. on every torchrun rank but the first)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=transient,
                    disable=not (enabled and console.is_terminal))
