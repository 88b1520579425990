"""The one-screen summary printed at the end of ``quickstart`` (and ``benchmark``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METHOD_ORDER = ("SFT-only", "duality RL", "oracle RL")


def _fmt(value: float | None, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if metric in ("accuracy", "macro_f1", "malformed_rate", "valid_rate") or metric.startswith(("knn@", "faithful_")):
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"


def headline(task: str) -> tuple[str, ...]:
    """The metrics a task's table shows: the task's own declaration (``Task.metric_names``).

    ``task`` may carry a dataset prefix (``kang2018/perturbation``); an unregistered task shows none.
    """
    from cellduality.tasks import TASKS

    cls = TASKS.get(task.split("/")[-1])
    return cls.metric_names() if cls is not None else ()


NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "malformed_rate": "malformed", "valid_rate": "valid",
         "reward_auc": "reward AUC", "reward_auc_contrast": "AUC vs wrong", "knn@10": "kNN@10", "gw": "GW ↓",
         "scfid": "scFID ↓", "mmd": "MMD ↓", "faithful_claims": "true claims",
         "faithful_responses": "all claims true"}


def summary_tables(comparison: dict[str, Any], title: str = "") -> list[Table]:
    """One table per task: methods and baselines as rows, headline metrics as columns."""
    tables = []
    summary = comparison.get("summary", {})
    for task, by_metric in summary.items():
        metrics = [m for m in headline(task) if m in by_metric]
        methods = [m for m in METHOD_ORDER if any(m in by_metric[x] for x in metrics)]
        methods += sorted({m for x in metrics for m in by_metric[x] if m not in methods})
        table = Table(title=f"{title}{' · ' if title else ''}{task}", title_justify="left")
        table.add_column("method", no_wrap=True)
        for metric in metrics:
            table.add_column(NAMES.get(metric, metric), justify="right")
        for method in methods:
            table.add_row(method.replace("baseline: ", "baseline "),
                          *[_fmt(by_metric[m].get(method, {}).get("mean"), m) for m in metrics])
        gaps = comparison.get("gap_closed", {}).get(task, {})
        shown = [f"{NAMES.get(m, m)} {100 * v:.0f}%" for m, v in gaps.items() if v is not None and math.isfinite(v)
                 and m in metrics]
        if shown:
            table.caption = "gap closed by duality RL: " + ", ".join(shown)
        tables.append(table)
    return tables


def print_summary(summary: dict[str, Any], out: Path, console: Console) -> None:
    for table in summary_tables(summary["evaluation"]):
        console.print(table)
    stages = Table(title="time per stage")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    for s in summary["stages"]:
        stages.add_row(s["stage"], f"{s['seconds']:.0f}" + (" (done earlier)" if s["skipped"] else ""))
    console.print(stages)
    console.print(
        "[dim]reward_auc: how well the duality reward separates the model's right from wrong answers; "
        "reward_auc_contrast: true answer vs a wrong one for the same input, paired (0.5 = chance). "
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
