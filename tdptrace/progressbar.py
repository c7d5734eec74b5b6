"""One progress display for every long operation with a known size (import, simulate, calibrate): the step's
name, a bar, %, rate and time left, on stderr and only on a terminal (a pipe or -q shows nothing)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Update = Callable[[str, int, int], None]  # (step, done, total)


@contextmanager
def progress(first_step: str, *, quiet: bool = False, in_bytes: bool = False) -> Iterator[Update]:
    """A context whose value is update(step, done, total); the display goes away when the context ends."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    err = Console(stderr=True)
    rate = TransferSpeedColumn() if in_bytes else MofNCompleteColumn()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), rate, TimeRemainingColumn(),
                   TimeElapsedColumn(), console=err, transient=True, disable=quiet or not err.is_terminal)
    with bar:
        task = bar.add_task(first_step, total=None)

        def update(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total or None)

        yield update
