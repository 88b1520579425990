"""``cellduality benchmark``: the paper's Table 6 comparison on every dataset available offline.

For each dataset and seed it runs the quickstart pipeline (sentences → tasks → teacher → SFT →
duality GRPO and oracle GRPO from the *same* SFT checkpoint → evaluation with baselines), then
aggregates the seeds into mean ± std tables with gap closed and reward validity. With
``generalist=True`` it also trains one model on the mixture of all training sets (one dataset per
task, as in the paper's cell-identity / cell-dynamics mixtures) and evaluates it per dataset,
in-distribution and on datasets kept out of training (out-of-distribution).

Budgets (``configs/benchmark_<budget>.yaml`` inside the package) size every stage; ``small``
keeps a run over the offline datasets within ~30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from cellduality.config import StrictModel, load_config
from cellduality.errors import CellDualityError
from cellduality.pipeline.quickstart import DatasetSettings, QuickstartSettings, run_quickstart
from cellduality.pipeline.training import method_folder

BUDGETS = ("tiny", "small", "full")

#: Which tasks each offline dataset serves, and how (keys come from the dataset registry).
OFFLINE_TASKS: dict[str, DatasetSettings] = {
    "pbmc68k_reduced": DatasetSettings(source="pbmc68k_reduced", tasks=["annotation", "generation"]),
    "kang2018": DatasetSettings(source="kang2018", tasks=["annotation", "perturbation"]),
    "a375_plx4720": DatasetSettings(source="a375_plx4720", tasks=["sensitivity"]),
    "papalexi2021": DatasetSettings(source="papalexi2021", tasks=["perturbation"]),
    "baron2016": DatasetSettings(source="baron2016", tasks=["annotation"]),
}


class BenchmarkSettings(StrictModel):
    """A budget: the pipeline settings plus which datasets and how many cells."""

    pipeline: dict[str, Any] = Field(default_factory=dict, description="QuickstartSettings keys except datasets")
    max_cells: int | None = Field(None, description="seeded subsample of each dataset")
    datasets: list[str] = Field(default_factory=lambda: list(OFFLINE_TASKS))


def budget_path(budget: str) -> Path:
    if budget not in BUDGETS:
        raise CellDualityError(f"Unknown budget '{budget}'; choose one of: {', '.join(BUDGETS)}.")
    return Path(str(resources.files("cellduality") / "configs" / f"benchmark_{budget}.yaml"))


def _available(names: list[str], data_dir: Path | None) -> tuple[list[str], dict[str, str]]:
    """Datasets that can be loaded here, and why the others cannot."""
    from cellduality.datasets import get_spec

    ok, missing = [], {}
    for name in names:
        if name not in OFFLINE_TASKS:
            raise CellDualityError(f"No benchmark recipe for '{name}'; choose from: {', '.join(OFFLINE_TASKS)}.")
        spec = get_spec(name)
        if spec.path is None or (data_dir is not None and (data_dir / spec.path).is_file()):
            ok.append(name)
        else:
            missing[name] = f"{spec.path} not in {data_dir}"
    return ok, missing


def _metrics(run: Path, method: str, dataset: str) -> dict[str, Any]:
    folder = run / "evaluation" / method_folder(method)
    return json.loads((folder / dataset / "metrics.json").read_text())


def run_benchmark(
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    seeds: int = 1,
    budget: str = "small",
    datasets: list[str] | None = None,
    generalist: bool = False,
    ood: list[str] | None = None,
    config: str | Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the benchmark (resumable) and write ``OUT/table.md`` and ``OUT/table.json``."""
    import os

    from cellduality.evaluation.reports import write_comparison_report
    from cellduality.paths import shared_data_dir
    from cellduality.pipeline.training import evaluate_options, evaluate_stage

    console = console or Console()
    out = Path(out)
    bench = load_config(BenchmarkSettings, config or budget_path(budget))
    root = Path(data_dir) if data_dir else shared_data_dir()
    if root is not None:
        os.environ["CELLDUALITY_DATA_DIR"] = str(root)  # the loaders read the shared folder from here
    names, missing = _available(datasets or bench.datasets, root)
    for name, why in missing.items():
        console.print(f"[yellow]skipping {name}: {why}[/]")
    if not names:
        raise CellDualityError("No dataset available; pass --data-dir pointing at the shared data folder.")
    ood = [n for n in (ood or []) if n in names]
    methods = ("SFT-only", "duality RL", "oracle RL")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = OFFLINE_TASKS[name].model_copy(update={"max_cells": bench.max_cells})
        for seed in range(seeds):
            console.rule(f"[bold magenta]{name} · seed {seed}")
            settings = QuickstartSettings(**{**bench.pipeline, "seed": seed, "datasets": {name: spec}})
            run = out / name / f"seed{seed}"
            run_quickstart(run, settings, console=console)
            for method in methods:
                runs.setdefault(name, {}).setdefault(method, []).append(_metrics(run, method, name))
            if seed == 0:
                baselines[name] = json.loads((run / "evaluation" / "sft_only" / name / "baselines.json").read_text())

    if generalist:
        train = [n for n in names if n not in ood]
        by_task: dict[str, str] = {}
        mixture: dict[str, DatasetSettings] = {}
        for name in train:  # one dataset per task, first come first served
            tasks = [t for t in OFFLINE_TASKS[name].tasks if t not in by_task]
            if tasks:
                by_task.update(dict.fromkeys(tasks, name))
                mixture[name] = OFFLINE_TASKS[name].model_copy(update={"tasks": tasks, "max_cells": bench.max_cells})
        for seed in range(seeds):
            console.rule(f"[bold magenta]generalist ({', '.join(mixture)}) · seed {seed}")
            settings = QuickstartSettings(**{**bench.pipeline, "seed": seed, "datasets": mixture})
            run = out / "generalist" / f"seed{seed}"
            run_quickstart(run, settings, console=console)
            for name in mixture:
                for method in methods:
                    runs.setdefault(f"{name} (generalist, ID)", {}).setdefault(method, []).append(
                        _metrics(run, method, name))
            models = {m: run / "models" / f for m, f in zip(methods, ("sft", "duality", "oracle"), strict=True)}
            for name in ood:  # datasets kept out of training: evaluated on their own task folders
                ood_dir = out / "generalist" / f"seed{seed}" / "ood" / name
                known = {t for t in by_task}
                tasks_dir = out / name / "seed0" / "data" / name / "tasks"
                if not known & set(OFFLINE_TASKS[name].tasks):
                    continue
                if not (ood_dir / "comparison.json").is_file():
                    evaluate_stage(models, {name: tasks_dir}, ood_dir,
                                   {**evaluate_options(settings.grpo, settings.evaluate),
                                    "tasks": sorted(known & set(OFFLINE_TASKS[name].tasks))},
                                   seed)
                for method in methods:
                    runs.setdefault(f"{name} (generalist, OOD)", {}).setdefault(method, []).append(
                        json.loads((ood_dir / method_folder(method) / name / "metrics.json").read_text()))

    tables = {}
    for name, by_method in runs.items():
        tables[name] = write_comparison_report(
            by_method, out / "tables" / name.replace(" ", "_").replace("(", "").replace(")", ""),
            baselines=baselines.get(name), sft="SFT-only", duality="duality RL", oracle="oracle RL",
            title=f"{name}: self-supervised (duality) RL vs oracle RL, {seeds} seed(s), budget {budget}",
        )
    lines = [f"# CellDuality benchmark (budget {budget}, {seeds} seed(s))", ""]
    for name in tables:
        folder = out / "tables" / name.replace(" ", "_").replace("(", "").replace(")", "")
        lines += [(folder / "comparison.md").read_text(), ""]
    if missing:
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in missing.items()), ""]
    (out / "table.md").write_text("\n".join(lines))
    (out / "table.json").write_text(json.dumps(tables, indent=1, default=str))
    return tables
