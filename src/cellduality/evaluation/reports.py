"""Markdown tables laid out like the paper's (Tables 2-6): one row per method, mean ± std over seeds.

* :func:`write_task_report` -- one evaluated model next to the classical baselines (``report.md``);
* :func:`write_comparison_report` -- several methods over several seeds (SFT-only, duality RL,
  oracle RL, baselines) with the *gap closed* by duality RL and the reward-validity
  diagnostic (``comparison.md`` + ``comparison.json``). ``cellduality benchmark`` calls it.

Rates (accuracy, F1, k-NN accuracy) are printed in %, distances as they are; arrows say which
direction is better, as in the paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellduality.evaluation.metrics import gap_closed, higher_is_better

Metrics = Mapping[str, Mapping[str, float]]
"""``{task: {metric: value}}`` as in ``metrics.json``."""

HEADLINE = ("accuracy", "macro_f1", "knn@3", "knn@5", "knn@10", "knn@25", "gw", "scfid", "mmd", "wasserstein")
EXTRA = ("malformed_rate", "valid_rate", "faithful_claims", "faithful_responses", "conclusion_match")
VALIDITY = ("reward_auc", "reward_auc_contrast", "reward_spearman", "duality_reward")
PERCENT = ("accuracy", "macro_f1", "knn@", "malformed_rate", "valid_rate", "faithful_", "conclusion_match")
NAMES = {"accuracy": "Acc.", "macro_f1": "F1", "gw": "GW", "scfid": "scFID", "mmd": "MMD",
         "wasserstein": "Wasserstein", "malformed_rate": "malformed", "valid_rate": "valid",
         "faithful_claims": "true claims", "faithful_responses": "all claims true",
         "conclusion_match": "conclusion = answer",
         "reward_auc": "AUC (own answers)", "reward_auc_contrast": "AUC (right vs wrong)",
         "reward_spearman": "Spearman (reward, RWJS)", "duality_reward": "mean reward"}


def _is_percent(metric: str) -> bool:
    return any(metric.startswith(p) for p in PERCENT)


def _header(metric: str) -> str:
    name = NAMES.get(metric, metric.replace("knn@", "k-NN k="))
    if metric in VALIDITY:
        return name
    arrow = "↑" if higher_is_better(metric) else "↓"
    return f"{name}{' (%)' if _is_percent(metric) else ''} {arrow}"


def _number(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if _is_percent(metric):
        return f"{100 * value:.2f}"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1; 0 for one run) over the finite values, and their count."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan"), 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def _cell(values: Sequence[float | None], metric: str) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    text = _number(mean, metric)
    if n > 1:
        text += f" ± {_number(std, metric)}"
    return text


def _columns(per_method: Mapping[str, Sequence[Mapping[str, float]]], wanted: Sequence[str]) -> list[str]:
    present = {m for runs in per_method.values() for run in runs for m in run}
    return [m for m in wanted if m in present]


def _table(per_method: Mapping[str, Sequence[Mapping[str, float]]], columns: Sequence[str]) -> list[str]:
    lines = ["| Method | " + " | ".join(_header(c) for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method, runs in per_method.items():
        cells = [_cell([run.get(c) for run in runs], c) for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def write_task_report(results: Metrics, out_dir: str | Path, *, baselines: Mapping[str, Metrics] | None = None,
                      title: str = "CellDuality evaluation (test split)") -> Path:
    """``report.md``: per task, the model's metrics above the classical baselines'."""
    runs = {"model": [results]}
    for task, by_baseline in (baselines or {}).items():
        for name, metrics in by_baseline.items():
            runs.setdefault(f"baseline: {name}", [{}])[0].setdefault(task, metrics)
    return _write(_comparison_lines(runs, title), Path(out_dir) / "report.md")


def metric_tables(runs: Mapping[str, Sequence[Metrics]], title: str) -> list[str]:
    """Markdown lines of a report: ``# title``, then per task a table of each method's metrics (e.g. a model card's)."""
    return _comparison_lines(runs, title)


def _comparison_lines(runs: Mapping[str, Sequence[Metrics]], title: str) -> list[str]:
    tasks = list(dict.fromkeys(t for rs in runs.values() for r in rs for t in r))
    lines = [f"# {title}", ""]
    for task in tasks:
        per_method = {m: [r[task] for r in rs if task in r] for m, rs in runs.items()}
        per_method = {m: v for m, v in per_method.items() if v}
        columns = _columns(per_method, HEADLINE + EXTRA)
        lines += [f"## {task}", "", *_table(per_method, columns), ""]
        validity = _columns(per_method, VALIDITY)
        if validity:
            lines += ["Reward validity (does the duality reward separate right from wrong answers?):", "",
                      *_table({m: v for m, v in per_method.items() if any(c in r for r in v for c in validity)},
                              validity), ""]
    return lines


def write_comparison_report(
    results: Mapping[str, Sequence[Metrics]],
    out_dir: str | Path,
    *,
    baselines: Mapping[str, Metrics] | None = None,
    sft: str = "sft",
    duality: str = "duality",
    oracle: str = "oracle",
    title: str = "Self-supervised (duality) RL vs oracle RL (paper Table 6)",
) -> dict[str, Any]:
    """Write ``comparison.md`` and ``comparison.json`` for ``{method: [metrics.json of each seed]}``.

    Methods named ``sft``, ``duality`` and ``oracle`` (override with the keyword arguments) get a
    *gap closed* table: ``(duality − SFT) / (oracle − SFT)`` of the seed means, per task and
    metric. ``baselines`` (``{task: {baseline: metrics}}``, one run each) are added as rows.
    Returns the JSON content: ``{"summary": {task: {metric: {method: {mean, std, n}}}},
    "gap_closed": {task: {metric: value}}}``.
    """
    runs: dict[str, list[Metrics]] = {m: list(rs) for m, rs in results.items()}
    for task, by_baseline in (baselines or {}).items():
        for name, metrics in by_baseline.items():
            runs.setdefault(f"baseline: {name}", [{}])[0].setdefault(task, metrics)  # type: ignore[union-attr]
    keys = {(t, m) for rs in runs.values() for r in rs for t, ms in r.items() for m in ms}
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for task, metric in sorted(keys):
        for method, rs in runs.items():
            mean, std, n = mean_std([r.get(task, {}).get(metric) for r in rs])
            if n:
                summary.setdefault(task, {}).setdefault(metric, {})[method] = {"mean": mean, "std": std, "n": n}
    gaps: dict[str, dict[str, float]] = {}
    for task, by_metric in summary.items():
        for metric in HEADLINE:
            entry = by_metric.get(metric, {})
            if all(k in entry for k in (sft, duality, oracle)):
                gaps.setdefault(task, {})[metric] = gap_closed(entry[sft]["mean"], entry[duality]["mean"],
                                                               entry[oracle]["mean"], higher_is_better(metric))
    lines = _comparison_lines(runs, title)
    if gaps:
        lines += ["## Gap closed by duality RL", "",
                  "(duality − SFT) / (oracle − SFT) of the seed means: 100% = as good as the oracle, "
                  "0% = no better than SFT; undefined when the oracle did not beat SFT.", "", "| Task | Metric | Gap closed |", "|---|---|---|"]
        for task, by_metric in gaps.items():
            for metric, value in by_metric.items():
                shown = f"{100 * value:.1f}%" if math.isfinite(value) else "– (oracle not better than SFT)"
                lines.append(f"| {task} | {_header(metric)} | {shown} |")
        lines.append("")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(lines, out / "comparison.md")
    content = {"summary": summary, "gap_closed": gaps}
    tmp = out / "comparison.json.tmp"
    tmp.write_text(json.dumps(_strict(content), indent=1))
    tmp.replace(out / "comparison.json")
    return content


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(lines: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
