"""Progress of long CLI work (`plan --full`, `backtest`, `sla`) on stderr, only on a terminal.

On a terminal: a bar with done/total, elapsed time and time left (rich, which typer
already uses), cleared when done so the answer on stdout stands alone. Piped or
redirected: nothing at all, so scripts read exactly what they read before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


class Advance(Protocol):
    def __call__(self, n: int = 1) -> None:
        """Move the bar `n` steps on."""


def _still(n: int = 1) -> None:
    """No terminal: no bar to move."""


def _terminal(console: Console | None) -> Console | None:
    """The console to draw on, or None when stderr is not a terminal."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    return console if console.is_terminal else None


@contextmanager
def progress(description: str, total: int | None, console: Console | None = None) -> Iterator[Advance]:
    """`advance(n)` moves a bar of `total` steps (None: a count with no end known yet)."""
    shown = _terminal(console)
    if shown is None:
        yield _still
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=shown, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


def track(
    items: Iterable[T], description: str, total: int | None, console: Console | None = None
) -> Iterator[T]:
    """`items`, one by one, advancing a bar of `total` (see `progress`)."""
    with progress(description, total, console) as advance:
        for item in items:
            yield item
            advance(1)
