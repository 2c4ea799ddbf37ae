"""One place that builds rich progress bars, on stderr, on the main process only."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(*extra_columns: str, disable: bool = False) -> Progress:
    """A progress bar: description, bar, n/total, elapsed, remaining, then ``extra_columns``.

    Each extra column formats the task's fields, e.g. ``"loss {task.fields[loss]}"``.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *(TextColumn(c) for c in extra_columns),
        console=console,
        disable=disable,
        transient=False,
    )
