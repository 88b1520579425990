"""Stage functions shared by ``quickstart`` and ``benchmark``.

Each is a thin call into the stage's own module with that module's validated settings, so the
pipelines add orchestration only: which folders feed which stage, and resuming.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellduality.config import validate_config
from cellduality.errors import CellDualityError
from cellduality.paths import atomic_dir


def merge_task_dirs(dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Concatenate several task folders (one per dataset) into one multi-task mixture.

    Task names must be distinct across folders (e.g. annotation+generation from one dataset,
    sensitivity from another). The lineage files (inverse model, vocabulary) of the first folder
    are kept: it is the primary dataset whose cells the generation task writes.
    """
    from datasets import DatasetDict, concatenate_datasets

    from cellduality.tasks.builders import FOLDERS, LINEAGE_FILES, load_task_datasets

    manifests = [json.loads((Path(d) / "tasks.json").read_text()) for d in dirs]
    merged_tasks: dict[str, Any] = {}
    for d, manifest in zip(dirs, manifests, strict=True):
        for name, entry in manifest["tasks"].items():
            if name in merged_tasks:
                raise CellDualityError(f"Task '{name}' comes from two datasets (second: {d}); give each task one dataset.")
            merged_tasks[name] = entry
    with atomic_dir(out, "tasks build") as tmp:
        for folder in FOLDERS:
            parts = [load_task_datasets(d, folder) for d in dirs]
            merged = DatasetDict()
            for split in sorted({s for part in parts for s in part}):
                present = [part[split] for part in parts if split in part and len(part[split])]
                if present:
                    rows = concatenate_datasets(present)
                    merged[split] = rows.shuffle(seed=0) if split == "train" else rows
            merged.save_to_disk(str(tmp / folder))
        manifest = {**manifests[0], "tasks": merged_tasks, "merged_from": [str(d) for d in dirs],
                    "counts": {k: v for m in manifests for k, v in m.get("counts", {}).items()}}
        (tmp / "tasks.json").write_text(json.dumps(manifest, indent=1))
        for name in LINEAGE_FILES:
            source = Path(dirs[0]) / name
            if source.is_file():
                shutil.copy2(source, tmp / name)
    return {"tasks": sorted(merged_tasks)}


def teach_stage(tasks_dir: Path, out: Path, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    from cellduality.teacher import TeachConfig, build_sft

    config = validate_config(TeachConfig, {"seed": seed, **options}, source="teach settings")
    report = build_sft(tasks_dir, out, config, overwrite=True)
    return {"acceptance": {k: v for k, v in report.items() if "accept" in k or k == "per_task"}}


def sft_stage(sft_dir: Path, out: Path, options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    from cellduality.training.sft import SFTSettings, run_sft

    settings = validate_config(SFTSettings, {"seed": seed, **options}, source="sft settings")
    result = run_sft(sft_dir, out, settings, resume=True)
    return {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str))}


def grpo_stage(tasks_dir: Path, out: Path, sft_model: Path, mode: str, options: Mapping[str, Any],
               seed: int) -> dict[str, Any]:
    from cellduality.training.grpo import GRPOSettings, run_grpo

    settings = validate_config(GRPOSettings, {"seed": seed, **options, "reward": mode}, source="grpo settings")
    result = run_grpo(tasks_dir, out, sft_model, settings, resume=True)
    return {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str))}


def evaluate_options(grpo: Mapping[str, Any], evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline's evaluation options: its ``evaluate`` section, with reward validity scored by the
    duality reward mode (``dual_reward``) its ``grpo`` section trains with -- the figure is about the
    reward that trained the model. An explicit ``evaluate.dual_reward`` wins."""
    from cellduality.training.grpo import GRPOSettings

    return {"dual_reward": grpo.get("dual_reward", GRPOSettings.model_fields["dual_reward"].default), **evaluate}


def method_folder(method: str) -> str:
    """The folder a method's evaluation is written to (``"duality RL"`` -> ``duality_rl``)."""
    return method.replace(" ", "_").replace("-", "_").lower()


def evaluate_stage(models: Mapping[str, Path], task_dirs: Mapping[str, Path], out: Path,
                   options: Mapping[str, Any], seed: int, *, sft: str = "SFT-only", duality: str = "duality RL",
                   oracle: str = "oracle RL") -> dict[str, Any]:
    """Evaluate each model on the test split of each dataset's tasks, plus baselines; write the comparison.

    Tasks of different datasets are reported as ``task`` when one dataset is evaluated and as
    ``dataset/task`` otherwise. Baselines come from the first model's evaluation (they do not
    depend on the model). Returns ``comparison.json``'s content.
    """
    from cellduality.evaluation.evaluate import evaluate_model
    from cellduality.evaluation.reports import write_comparison_report

    qualify = len(task_dirs) > 1
    results: dict[str, list[dict[str, Any]]] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for i, (method, model_dir) in enumerate(models.items()):
        merged: dict[str, Any] = {}
        for name, tasks_dir in task_dirs.items():
            run_dir = out / method_folder(method) / name
            metrics = evaluate_model(model_dir, tasks_dir, run_dir, seed=seed, baselines=i == 0, **options)
            for task, values in metrics.items():
                merged[f"{name}/{task}" if qualify else task] = values
            if i == 0:
                for task, values in json.loads((run_dir / "baselines.json").read_text()).items():
                    baselines[f"{name}/{task}" if qualify else task] = values
        results[method] = [merged]
    return write_comparison_report(results, out, baselines=baselines, sft=sft, duality=duality, oracle=oracle,
                                   title="CellDuality quickstart: SFT-only vs self-supervised RL vs oracle RL")
