"""One place that builds progress displays, on stderr, on the main process only.

On a terminal, a live rich bar. Without one (CI logs, ``| tee``), a live bar would print
nothing until the end, so a plain line per task is printed every :data:`INTERVAL` seconds
instead, and one when the task is complete.

The time left is estimated from the pace since the task's first advance, never from the first
advance itself (rich's bar does the same): the first unit of work carries the warm-up (lazy
allocations, a cold cache, or a stage far longer than the others, such as the demo's
pretraining counted as one unit among the runs), and extrapolating it to the rest gave hours
for a run of minutes. Until a second advance there is no estimate to print.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

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
INTERVAL = 30.0  # seconds between plain progress lines
_clock = time.monotonic


def make_progress(*extra_columns: str, disable: bool = False) -> Progress | PlainProgress:
    """A progress display: description, bar, n/total, elapsed, remaining, then ``extra_columns``.

    Each extra column formats the task's fields, e.g. ``"loss {task.fields[loss]}"``. Both
    kinds have rich's ``add_task(description, total=..., **fields)`` and ``update(task, ...)``.
    """
    if not disable and not console.is_terminal:
        return PlainProgress(extra_columns)
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


class PlainProgress:
    """Progress as plain lines: ``"sft: 120/400, 0:01:23 elapsed, 0:03:34 left, loss 2.1"``."""

    def __init__(self, extra_columns: tuple[str, ...] = ()) -> None:
        self.columns = extra_columns
        self.tasks: list[SimpleNamespace] = []

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for task in self.tasks:
            if task.printed != task.completed:
                self._print(task)

    def add_task(self, description: str, total: float | None = None, **fields) -> int:
        now = _clock()
        self.tasks.append(
            SimpleNamespace(
                description=description,
                total=total,
                completed=0,
                fields=fields,
                start=now,
                last=now,
                printed=0,
                first=None,  # (clock, completed) at the first advance: where the pace starts
            )  # fmt: skip
        )
        return len(self.tasks) - 1

    def update(self, task_id: int, *, advance: float = 0, description: str | None = None,
               **fields) -> None:  # fmt: skip
        task = self.tasks[task_id]
        task.completed += advance
        task.fields.update(fields)
        if description is not None:
            task.description = description
        now = _clock()
        if advance and task.first is None:
            task.first = (now, task.completed)
        done = task.total is not None and task.completed >= task.total
        if advance and (done or now - task.last >= INTERVAL):
            self._print(task, now)

    def _print(self, task: SimpleNamespace, now: float | None = None) -> None:
        now = _clock() if now is None else now
        task.last, task.printed = now, task.completed
        elapsed = now - task.start
        total = "" if task.total is None else f"/{task.total:g}"
        parts = [
            f"{task.description}: {task.completed:g}{total}",
            f"{_clock_text(elapsed)} elapsed",
        ]
        left = _time_left(task, now)
        if left is not None:
            parts.append(f"{_clock_text(left)} left")
        parts += [c.format(task=task) for c in self.columns]
        print(", ".join(parts), file=console.file, flush=True)


def _time_left(task: SimpleNamespace, now: float) -> float | None:
    """Seconds left at the pace since the first advance; None before a second one."""
    if task.first is None or not task.total or task.completed >= task.total:
        return None
    since, done_then = task.first
    paced = task.completed - done_then
    if paced <= 0 or now <= since:
        return None
    return (now - since) * (task.total - task.completed) / paced


def _clock_text(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
