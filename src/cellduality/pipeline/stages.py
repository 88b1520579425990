"""A tiny resumable stage runner for multi-stage pipelines (quickstart, benchmark).

Each stage writes one output folder. A stage counts as finished when its folder holds a
``.stage_done.json`` marker, written last; re-running a pipeline skips finished stages and lets
interrupted training stages resume from their own checkpoints. This is bookkeeping only: every
stage itself is an ordinary CellDuality function that can also be run from its own command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

MARKER = ".stage_done.json"


@dataclass
class StageResult:
    """What a finished stage reports (also read back from its marker on a re-run)."""

    name: str
    seconds: float
    skipped: bool
    info: dict[str, Any] = field(default_factory=dict)


def stage_done(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text())


def run_stage(
    name: str,
    out: Path,
    fn: Callable[[], dict[str, Any] | None],
    console: Console,
    *,
    force: bool = False,
) -> StageResult:
    """Run ``fn`` unless ``out`` already carries a done-marker; write the marker afterwards.

    ``fn`` must leave its results in ``out`` (it may resume from partial work there) and
    may return a small JSON-able dict of figures that is stored in the marker.
    """
    if stage_done(out) and not force:
        marker = read_marker(out)
        console.print(f"[dim]✓ {name}: already done ({marker.get('seconds', 0):.0f} s), skipped[/]")
        return StageResult(name, float(marker.get("seconds", 0.0)), True, marker.get("info", {}))
    console.rule(f"[bold cyan]{name}")
    start = time.perf_counter()
    info = fn() or {}
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"stage": name, "seconds": seconds, "info": info}, indent=2, default=str))
    tmp.replace(out / MARKER)
    console.print(f"[green]✓ {name}[/] in {seconds:.0f} s")
    return StageResult(name, seconds, False, info)
