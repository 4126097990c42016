"""A shared rich progress bar on stderr; hidden when stderr is not a terminal (logs stay clean)."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class RunsRemainingColumn(ProgressColumn):
    """Time left. A task with `runs_done` and `runs_total` fields is estimated from the mean time of its finished
    runs (fitting a method advances no query step, so a per-step rate would leave the fit out); others from the
    step rate, as rich does."""

    fallback = TimeRemainingColumn()

    def render(self, task: Task) -> Text:
        done, total = task.fields.get("runs_done"), task.fields.get("runs_total")
        if done is None or total is None:
            return self.fallback.render(task)
        if task.finished or done >= total:
            return Text("0:00:00", style="progress.remaining")
        if not done or not task.elapsed:
            return Text("ETA after run 1", style="progress.remaining")
        left = task.elapsed / done * (total - done)
        return Text(str(timedelta(seconds=int(left))), style="progress.remaining")


def progress_bar(transient: bool = True, enabled: bool = True) -> Progress:
    """`enabled=False` hides it (e.g. on every torchrun rank but the first)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    RunsRemainingColumn(), console=console, transient=transient,
                    disable=not (enabled and console.is_terminal))
