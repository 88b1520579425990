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


PROPORTIONS = ("accuracy", "knn@10")
"""Headline metrics that are shares of test examples, for which a noise band can be stated."""


def stage2_verdicts(comparison: dict[str, Any]) -> list[str]:
    """Per task: did duality RL move the headline share past noise on this many test examples?

    A difference within two standard errors of a difference of two shares,
    ``2 * sqrt(2 p (1 - p) / n)`` at the SFT model's share ``p`` over ``n`` examples, is reported
    as noise -- the quickstart's 60 cells per task cannot show gains of a few points.
    """
    lines = []
    for task, by_metric in comparison.get("summary", {}).items():
        metric = next((m for m in headline(task) if m in PROPORTIONS and m in by_metric), None)
        n_values = by_metric.get("n", {}).get("SFT-only", {})
        if metric is None or not n_values.get("mean"):
            continue
        sft = by_metric[metric].get("SFT-only", {}).get("mean")
        dual = by_metric[metric].get("duality RL", {}).get("mean")
        if sft is None or dual is None:
            continue
        n = int(n_values["mean"])
        band = 2 * math.sqrt(2 * max(sft * (1 - sft), 1 / n) / n)
        diff = dual - sft
        verdict = ("a gain beyond noise" if diff > band else "a loss beyond noise" if diff < -band
                   else "no measurable change")
        lines.append(f"{task}: duality RL vs SFT-only {NAMES.get(metric, metric)} {100 * diff:+.1f} points on {n} "
                     f"test examples (noise band ±{100 * band:.0f}): {verdict}.")
    return lines


def print_summary(summary: dict[str, Any], out: Path, console: Console) -> None:
    for table in summary_tables(summary["evaluation"]):
        console.print(table)
    for line in stage2_verdicts(summary["evaluation"]):
        console.print(line)
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
