"""Tables from a ``stage2_protocol.py`` run: mean ± std over seeds, per dataset, task and split.

    python benchmarks/stage2_table.py runs/stage2            # prints Markdown
    python benchmarks/stage2_table.py runs/stage2 --json t.json

Methods: ``sft`` (SFT-only), ``sft_extra`` (SFT trained longer), ``duality`` and ``oracle`` (GRPO
from the same SFT model, same config). ``best SFT`` is, per seed, whichever of the two SFT models
scores higher on *validation* -- the baseline RL has to beat. Gap closed = (duality - best SFT) /
(oracle - best SFT), reported only where the oracle improves on best SFT. Reward diagnostics of
the SFT model (validation split) and the share of zero-spread GRPO groups come alongside.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

METRICS = {"classification": ("accuracy", "macro_f1", "faithful_cell_claims"),
           "generative": ("knn@10", "gw", "valid_rate")}
PRIMARY = {"classification": "accuracy", "generative": "knn@10"}
METHODS = ("sft", "sft_extra", "best_sft", "duality", "oracle")


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def collect(root: Path) -> dict[str, Any]:
    """``{dataset: {task: {split: {method: {metric: [per-seed values]}}, "kind": ...}}}`` plus diagnostics."""
    out: dict[str, Any] = {}
    base = root / "results" if (root / "results").is_dir() else root
    for dataset_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "logs"):
        tasks: dict[str, Any] = {}
        seeds = sorted(p for p in dataset_dir.iterdir() if p.is_dir())
        for seed_dir in seeds:
            for split in ("validation", "test"):
                runs = {m: _load(seed_dir / f"{m}_{split}.json") for m in ("sft", "sft_extra", "duality", "oracle")}
                for task in (runs["sft"] or {}):
                    kind = "classification" if "accuracy" in runs["sft"][task] else "generative"
                    entry = tasks.setdefault(task, {"kind": kind, "seeds": set(), "splits": {}})
                    entry["seeds"].add(seed_dir.name)
                    per_method = entry["splits"].setdefault(split, {m: {} for m in METHODS})
                    for method, metrics in runs.items():
                        for metric in METRICS[kind]:
                            value = (metrics or {}).get(task, {}).get(metric)
                            per_method[method].setdefault(metric, []).append(value)
            diag = _load(seed_dir / "diagnose.json")
            for task, figures in ((diag or {}).get("tasks") or {}).items():
                d = tasks.setdefault(task, {"kind": figures.get("kind"), "seeds": set(), "splits": {}})
                for key in ("right_vs_wrong_auc", "own_answer_auc", "own_answer_spearman", "zero_spread_share"):
                    if figures.get(key) is not None:
                        d.setdefault("diagnostics", {}).setdefault(key, []).append(figures[key])
            for method in ("duality", "oracle"):
                train = _load(seed_dir / f"{method}_train.json")
                if train:
                    zero = [h.get("frac_reward_zero_std") for h in train["history"] if "frac_reward_zero_std" in h]
                    for task in tasks:
                        tasks[task].setdefault("grpo", {}).setdefault(f"{method}_zero_spread", []).append(
                            statistics.fmean(zero) if zero else None)
                        tasks[task]["grpo"].setdefault(f"{method}_wall_seconds", []).append(train["timing"].get("wall_seconds"))
        _best_sft(tasks)
        out[dataset_dir.name] = tasks
    return out


def _best_sft(tasks: dict[str, Any]) -> None:
    """Per seed, the SFT model (plain or extra) with the better *validation* primary metric."""
    for entry in tasks.values():
        primary = PRIMARY.get(entry["kind"])
        val = entry["splits"].get("validation")
        if primary is None or val is None:
            continue
        choose_extra = [
            (b or float("-inf")) > (a or float("-inf"))
            for a, b in zip(val["sft"][primary], val["sft_extra"][primary], strict=True)
        ]
        for split_values in entry["splits"].values():
            for metric in split_values["sft"]:
                split_values["best_sft"][metric] = [
                    e if pick else s for s, e, pick in
                    zip(split_values["sft"][metric], split_values["sft_extra"][metric], choose_extra, strict=False)
                ]


def _fmt(pair: tuple[float, float] | None, pct: bool) -> str:
    if pair is None:
        return "–"
    mean, std = pair
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if pct else f"{mean:.3f} ± {std:.3f}"


def gap_closed(split: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """Mean over seeds of (duality - best SFT) / (oracle - best SFT), where the oracle improved."""
    values = []
    for s, d, o in zip(split["best_sft"][metric], split["duality"][metric], split["oracle"][metric], strict=False):
        if None in (s, d, o) or o - s <= 0:
            continue
        values.append((d - s) / (o - s))
    return _mean_std(values)


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for dataset, tasks in results.items():
        for task, entry in tasks.items():
            kind = entry["kind"]
            if kind not in METRICS:
                continue
            lines.append(f"### {dataset} — {task} ({len(entry['seeds'])} seeds)\n")
            for split in ("test", "validation"):
                values = entry["splits"].get(split)
                if not values:
                    continue
                metrics = METRICS[kind]
                lines.append(f"{split} | " + " | ".join(metrics))
                lines.append("---|" + "|".join("---" for _ in metrics))
                for method in METHODS:
                    cells = [_fmt(_mean_std(values[method].get(m, [])), pct=m != "gw") for m in metrics]
                    lines.append(f"{method} | " + " | ".join(cells))
                primary = PRIMARY[kind]
                lines.append(f"\ngap closed ({split}, {primary}): {_fmt(gap_closed(values, primary), pct=True)}\n")
            diag = entry.get("diagnostics")
            if diag:
                lines.append("SFT model reward diagnostics (validation): " + ", ".join(
                    f"{k} {_fmt(_mean_std(v), pct=False)}" for k, v in diag.items()))
            grpo = entry.get("grpo")
            if grpo:
                lines.append("GRPO: " + ", ".join(f"{k} {_fmt(_mean_std(v), pct=False)}" for k, v in grpo.items()))
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = collect(args.run)
    print(markdown(results))
    if args.json:
        def plain(o: Any) -> Any:
            return sorted(o) if isinstance(o, set) else o
        args.json.write_text(json.dumps(results, indent=1, default=plain))


if __name__ == "__main__":
    main()
