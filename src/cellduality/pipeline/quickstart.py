"""``cellduality quickstart``: the whole method on the embedded default data, in one command.

sentences → tasks → offline teacher → SFT → duality GRPO and oracle GRPO → evaluation, on scanpy's
bundled ``pbmc68k_reduced`` (fully offline). Cell-dynamics tasks join when their data is given.
Every stage leaves its output under ``OUT`` and a done-marker; re-running skips finished stages
and resumes interrupted training from its checkpoints. Budgets are set in
``configs/quickstart.yaml`` (shipped inside the package) so the run fits ~10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from cellduality.config import StrictModel, load_config, merge_configs, read_config_file, validate_config
from cellduality.errors import CellDualityError
from cellduality.pipeline.stages import StageResult, run_stage


class DatasetSettings(StrictModel):
    """How one dataset enters the quickstart (sentences + which tasks it serves)."""

    source: str = Field("pbmc68k_reduced", description="built-in name or .h5ad path")
    tasks: list[str] = Field(default_factory=lambda: ["annotation", "generation"])
    label_key: str | None = None
    perturbation_key: str | None = None
    control_value: str | None = None
    group_key: str | None = None
    drug_key: str | None = None
    drug: str | None = None
    gene_map: str | None = None
    top_k: int = 100
    max_cells: int | None = Field(None, description="seeded subsample of cells (keeps the run short)")


class QuickstartSettings(StrictModel):
    """Budgets of every stage; sections are passed to that stage's own validated settings."""

    seed: int = 0
    datasets: dict[str, DatasetSettings] = Field(default_factory=lambda: {"pbmc68k_reduced": DatasetSettings()})
    max_genes: int | None = Field(None, ge=2, description="genes of a cell shown in prompts "
                                  "(None: the tasks' default, cellduality.tasks.options)")
    n_hidden: int | None = Field(None, ge=1, description="genes an inpainting dual must hide "
                                 "(None: the tasks' default)")
    max_examples: int | None = Field(None, description="cells per task and split in the task sets")
    teach: dict[str, Any] = Field(default_factory=dict)
    sft: dict[str, Any] = Field(default_factory=dict)
    grpo: dict[str, Any] = Field(default_factory=dict)
    evaluate: dict[str, Any] = Field(default_factory=dict)


def default_config_path() -> Path:
    """The quickstart config shipped with the package."""
    return Path(str(resources.files("cellduality") / "configs" / "quickstart.yaml"))


def load_quickstart_settings(path: str | Path | None = None) -> QuickstartSettings:
    """The shipped quickstart config, with the user's YAML (``--config``) merged over it key by key
    (``datasets``, when given, replaces the shipped one: those are the datasets to run)."""
    if path is None:
        return load_config(QuickstartSettings, default_config_path())
    data = merge_configs(read_config_file(default_config_path()), read_config_file(path), replace=("datasets",))
    return validate_config(QuickstartSettings, data, source=str(path))


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def _sentences_stage(name: str, spec: DatasetSettings, out: Path, seed: int) -> dict[str, Any]:
    from cellduality.datasets import load_dataset
    from cellduality.sentences import build_cell_sentences

    adata, defaults = load_dataset(spec.source)
    keys = {**defaults, **{k: v for k, v in spec.model_dump().items() if v is not None}}
    if spec.max_cells and adata.n_obs > spec.max_cells:
        import numpy as np

        keep = np.sort(np.random.default_rng(seed).choice(adata.n_obs, spec.max_cells, replace=False))
        adata = adata[keep].copy()
    label_keys = [k for k in (keys.get("label_key"),) if k]
    cells = build_cell_sentences(
        adata,
        top_k=spec.top_k,
        label_keys=label_keys,
        perturbation_key=keys.get("perturbation_key"),
        control_value=keys.get("control_value"),
        group_key=keys.get("group_key"),
        drug_key=keys.get("drug_key"),
        gene_map=keys.get("gene_map"),
        seed=seed,
        source=name,
    )
    cells.save(out)
    return {"cells": len(cells.sentences), "inverse_fidelity": cells.meta.get("inverse_fidelity")}


def _tasks_stage(spec: DatasetSettings, sentences: Path, out: Path, settings: QuickstartSettings) -> dict[str, Any]:
    from cellduality.tasks import TASKS, build_task_datasets, get_task

    task_options: dict[str, dict[str, Any]] = {}
    for task in spec.tasks:
        declared = (TASKS.get(task) or type(get_task(task))).options_model.model_fields
        wanted = {"n_hidden": settings.n_hidden, "drug": spec.drug}  # to the tasks that declare them
        task_options[task] = {k: v for k, v in wanted.items() if k in declared and v is not None}
    manifest = build_task_datasets(
        sentences, spec.tasks, out, label_key=spec.label_key, seed=settings.seed, max_genes=settings.max_genes,
        max_examples=settings.max_examples, task_options=task_options, overwrite=True,
    )
    return {"counts": manifest.get("counts", {})}


def run_quickstart(
    out: str | Path,
    settings: QuickstartSettings | None = None,
    *,
    console: Console | None = None,
    extra_datasets: dict[str, DatasetSettings] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the whole pipeline under ``out``; return the summary written to ``summary.json``."""
    from cellduality.pipeline.training import (
        evaluate_options,
        evaluate_stage,
        grpo_stage,
        merge_task_dirs,
        sft_stage,
        teach_stage,
    )

    console = console or Console()
    settings = settings or load_quickstart_settings()
    datasets = {**settings.datasets, **(extra_datasets or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    task_dirs: dict[str, Path] = {}
    for name, spec in datasets.items():
        sent_dir = out / "data" / name / "sentences"
        results.append(run_stage(f"sentences [{name}]", sent_dir,
                                 lambda n=name, s=spec, d=sent_dir: _sentences_stage(n, s, d, settings.seed), console))
        task_dir = out / "data" / name / "tasks"
        results.append(run_stage(f"tasks [{name}: {', '.join(spec.tasks)}]", task_dir,
                                 lambda s=spec, a=sent_dir, d=task_dir: _tasks_stage(s, a, d, settings), console))
        task_dirs[name] = task_dir

    tasks_dir = out / "tasks"
    if len(task_dirs) == 1:
        tasks_dir = next(iter(task_dirs.values()))
    else:
        results.append(run_stage("tasks [mixture]", tasks_dir,
                                 lambda: merge_task_dirs(list(task_dirs.values()), tasks_dir), console))

    sft_data = out / "sft_data"
    results.append(run_stage("teacher + filtering", sft_data,
                             lambda: teach_stage(tasks_dir, sft_data, settings.teach, settings.seed), console))
    models = out / "models"
    results.append(run_stage("SFT (stage 1)", models / "sft",
                             lambda: sft_stage(sft_data, models / "sft", settings.sft, settings.seed), console))
    for mode, folder in (("duality", "duality"), ("ground-truth", "oracle")):
        results.append(run_stage(
            f"GRPO, {mode} reward (stage 2)", models / folder,
            lambda m=mode, f=folder: grpo_stage(tasks_dir, models / f, models / "sft", m, settings.grpo, settings.seed),
            console,
        ))
    evaluation = out / "evaluation"
    results.append(run_stage(
        "evaluation", evaluation,
        lambda: evaluate_stage({"SFT-only": models / "sft", "duality RL": models / "duality",
                                "oracle RL": models / "oracle"}, task_dirs, evaluation,
                               evaluate_options(settings.grpo, settings.evaluate), settings.seed),
        console,
    ))
    summary = {
        "stages": [{"stage": r.name, "seconds": round(r.seconds, 1), "skipped": r.skipped} for r in results],
        "evaluation": json.loads((evaluation / "comparison.json").read_text()),
        "models": {k: str(models / k) for k in ("sft", "duality", "oracle")},
        "missing_tasks": [t for t in ("sensitivity", "perturbation")
                          if not any(t in spec.tasks for spec in datasets.values())],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def reset(out: Path) -> None:
    """Remove a previous quickstart folder (``--fresh``)."""
    from cellduality.outputs import has_content, output_owner

    if out.exists():
        if has_content(out) and output_owner(out) != "quickstart":
            raise CellDualityError(f"{out} is not a quickstart folder (no marker); refusing to delete it.")
        shutil.rmtree(out)
