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
           "generative": ("knn@10", "gw", "valid_rate"),
           "distribution": ("scfid", "mmd", "wasserstein")}  # perturbation: predicted vs real populations
PRIMARY = {"classification": "accuracy", "generative": "knn@10", "distribution": "scfid"}
LOWER_IS_BETTER = {"gw", "scfid", "mmd", "wasserstein"}
PERCENT = {"accuracy", "macro_f1", "faithful_cell_claims", "knn@10", "valid_rate"}
BASELINES = ("sft", "sft_extra", "best_sft")


def _kind(metrics: dict[str, Any]) -> str:
    """Which metric family a task's ``metrics.json`` entry has."""
    return "classification" if "accuracy" in metrics else "generative" if "knn@10" in metrics else "distribution"


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _mean_std(values: list[float] | dict[str, float]) -> tuple[float, float] | None:
    """Mean ± sample std of the finite values (a dict: one value per seed)."""
    values = list(values.values()) if isinstance(values, dict) else values
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
                names = sorted({f.name[: -len(f"_{split}.json")] for f in seed_dir.glob(f"*_{split}.json")})
                runs = {m: _load(seed_dir / f"{m}_{split}.json") for m in names}
                for task in (runs.get("sft") or {}):
                    kind = _kind(runs["sft"][task])
                    entry = tasks.setdefault(task, {"kind": kind, "seeds": set(), "splits": {}})
                    entry["seeds"].add(seed_dir.name)
                    per_method = entry["splits"].setdefault(split, {m: {} for m in BASELINES})
                    for method, metrics in runs.items():
                        per_method.setdefault(method, {})
                        for metric in METRICS[kind]:
                            value = (metrics or {}).get(task, {}).get(metric)
                            per_method[method].setdefault(metric, {})[seed_dir.name] = value
            for diag_file in sorted(seed_dir.glob("diagnose*.json")):
                diag = _load(diag_file)
                for task, figures in ((diag or {}).get("tasks") or {}).items():
                    d = tasks.setdefault(task, {"kind": figures.get("kind"), "seeds": set(), "splits": {}})
                    for key in ("right_vs_wrong_auc", "own_answer_auc", "own_answer_spearman", "zero_spread_share"):
                        if figures.get(key) is not None:
                            d.setdefault("diagnostics", {}).setdefault(diag["reward"], {}).setdefault(
                                key, []).append(figures[key])
            for train_file in sorted(seed_dir.glob("*_train.json")):
                method = train_file.name[: -len("_train.json")]
                train = _load(train_file)
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
        plain, extra = val["sft"].get(primary, {}), val["sft_extra"].get(primary, {})
        sign = -1 if primary in LOWER_IS_BETTER else 1
        pick = {seed: "sft_extra" if extra.get(seed) is not None and (
                    plain.get(seed) is None or sign * extra[seed] > sign * plain[seed]) else "sft"
                for seed in set(plain) | set(extra)}
        for split_values in entry["splits"].values():
            for metric in set(split_values["sft"]) | set(split_values["sft_extra"]):
                split_values["best_sft"][metric] = {
                    seed: split_values[method].get(metric, {}).get(seed) for seed, method in pick.items()}


def _fmt(pair: tuple[float, float] | None, pct: bool, n: int | None = None, of: int | None = None) -> str:
    """``mean ± std``; `` (n=k)`` when only ``k`` of the ``of`` seeds have a value."""
    if pair is None:
        return "–"
    mean, std = pair
    text = f"{100 * mean:.1f} ± {100 * std:.1f}" if pct else f"{mean:.3f} ± {std:.3f}"
    return text + (f" (n={n})" if n is not None and of is not None and n < of else "")


def _count(values: dict[str, float]) -> int:
    return sum(1 for v in values.values() if v is not None and v == v)


def recipes(split: dict[str, Any]) -> list[str]:
    """Recipe suffixes present: '' for ``duality``/``oracle``, 'NAME' for ``duality_NAME``."""
    return sorted({m[len("duality"):].lstrip("_") for m in split if m.startswith("duality")})


def gap_closed(split: dict[str, Any], metric: str, recipe: str = "") -> tuple[tuple[float, float] | None, int]:
    """Mean over seeds of (duality - best SFT) / (oracle - best SFT) where the oracle improved; how many seeds."""
    suffix = f"_{recipe}" if recipe else ""
    oracles = [m for m in split if m.startswith("oracle")]
    oracle_name = f"oracle{suffix}" if f"oracle{suffix}" in split or len(oracles) != 1 else oracles[0]  # --oracle-once
    base, dual, oracle = (split.get(m, {}).get(metric, {}) for m in ("best_sft", f"duality{suffix}", oracle_name))
    values = []
    sign = -1 if metric in LOWER_IS_BETTER else 1
    for seed in base:
        s, d, o = base.get(seed), dual.get(seed), oracle.get(seed)
        if None in (s, d, o) or sign * (o - s) <= 0:
            continue
        values.append((d - s) / (o - s))
    return _mean_std(values), len(values)


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
                n_seeds = len(entry["seeds"])
                for method in values:
                    cells = [_fmt(_mean_std(values[method].get(m, {})), m in PERCENT,
                                  _count(values[method].get(m, {})), n_seeds) for m in metrics]
                    lines.append(f"{method} | " + " | ".join(cells))
                primary = PRIMARY[kind]
                for recipe in recipes(values):
                    gap, k = gap_closed(values, primary, recipe)
                    lines.append(f"\ngap closed ({split}, {primary}{', recipe ' + recipe if recipe else ''}): "
                                 f"{_fmt(gap, pct=True)} ({k} of {n_seeds} seeds have an oracle better than best SFT)")
                lines.append("")
            for reward, diag in (entry.get("diagnostics") or {}).items():
                lines.append(f"SFT model, '{reward}' duality reward diagnostics (validation): " + ", ".join(
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
