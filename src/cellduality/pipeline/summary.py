"""The one-screen summary printed at the end of ``quickstart`` (and ``benchmark``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# headline metric per task, and whether higher is better
HEADLINE = {
    "annotation": ("accuracy", "macro_f1", "malformed_rate", "reward_auc", "reward_auc_contrast"),
    "sensitivity": ("accuracy", "macro_f1", "malformed_rate", "reward_auc", "reward_auc_contrast"),
    "generation": ("knn@10", "gw", "valid_rate", "reward_auc_contrast"),
    "perturbation": ("scfid", "mmd", "valid_rate", "reward_auc_contrast"),
}
METHOD_ORDER = ("SFT-only", "duality RL", "oracle RL")


def _fmt(value: float | None, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if metric in ("accuracy", "macro_f1", "malformed_rate", "valid_rate") or metric.startswith("knn@"):
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def _task_kind(task: str) -> str:
    return task.split("/")[-1]


def summary_table(comparison: dict[str, Any]) -> Table:
    """Methods × (task, metric) with baselines, gap closed and reward validity."""
    table = Table(title="CellDuality: SFT-only vs self-supervised (duality) RL vs oracle RL", show_lines=False)
    table.add_column("task")
    table.add_column("metric")
    summary = comparison.get("summary", {})
    methods = [m for m in METHOD_ORDER if any(m in by for t in summary.values() for by in t.values())]
    baselines = sorted({m for t in summary.values() for by in t.values() for m in by if m.startswith("baseline")})
    for m in (*methods, *baselines):
        table.add_column(m.replace("baseline: ", ""), justify="right")
    table.add_column("gap closed", justify="right")
    for task, by_metric in summary.items():
        for metric in HEADLINE.get(_task_kind(task), ()):
            entry = by_metric.get(metric)
            if not entry:
                continue
            row = [_fmt(entry.get(m, {}).get("mean"), metric) for m in (*methods, *baselines)]
            gap = comparison.get("gap_closed", {}).get(task, {}).get(metric)
            gap_text = "" if gap is None else (f"{100 * gap:.0f}%" if math.isfinite(gap) else "–")
            table.add_row(task, metric, *row, gap_text)
    return table


def print_summary(summary: dict[str, Any], out: Path, console: Console) -> None:
    console.print(summary_table(summary["evaluation"]))
    stages = Table(title="time per stage")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    for s in summary["stages"]:
        stages.add_row(s["stage"], f"{s['seconds']:.0f}" + (" (done earlier)" if s["skipped"] else ""))
    console.print(stages)
    console.print(
        "[dim]reward_auc: how well the duality reward separates the model's right from wrong answers; "
        "reward_auc_contrast: true answer vs a wrong one (0.5 = chance). "
        "gap closed: (duality − SFT) / (oracle − SFT).[/]"
    )
    missing = summary.get("missing_tasks") or []
    if missing:
        console.print(
            f"Cell-dynamics tasks not run ({', '.join(missing)}): add them with "
            "--sensitivity-data CELLS.h5ad and/or --perturbation-data CELLS.h5ad "
            "(see `cellduality quickstart --help`)."
        )
    console.print(f"Report: {out / 'evaluation' / 'comparison.md'} · models: {out / 'models'} · "
                  f"annotate your cells: cellduality annotate CELLS.h5ad --model {out / 'models' / 'duality'} "
                  "--out annotated.h5ad")
