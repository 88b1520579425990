"""One rich progress line per long stage (rate and ETA), for commands that report ``(stage, done, total)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def stage_progress(console: Console | None = None, unit: str = "cells") -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``update(stage, done, total)``; each new ``stage`` gets its own line, which stays when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console or Console(stderr=True)) as bar:
        lines: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in lines:
                lines[stage] = bar.add_task(stage, total=total, rate="")
            bar.update(lines[stage], completed=done, total=total)
            line = next(t for t in bar.tasks if t.id == lines[stage])
            speed = done / line.elapsed if line.elapsed else None
            bar.update(lines[stage], rate=f"{speed:,.1f} {unit}/s" if speed else "")

        yield update
