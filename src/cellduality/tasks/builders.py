"""Cell sentences -> primal, dual, RL and oracle-RL ``datasets`` (architecture.md §2).

* ``primal``: the task as posed, with the reference answer ``y*``.
* ``dual``: built from each primal example exactly as paper §3.3.1 says: prompt from
  ``(y*, x_k)``, answer ``x_u``.
* ``rl``: what the self-supervised duality reward needs and nothing more: the primal prompt,
  ``x_k``, ``x_u`` (part of the prompt's own input) and the seed. No ground-truth output exists in
  these rows *by construction*: they are written from :meth:`Task.split` and
  :meth:`Task.primal_prompt` only, never from ``Example.target`` or ``Example.meta``.
* ``rl_oracle``: the same rows plus ``target`` for the supervised-RLVR baseline.

Everything is written to a temporary folder and renamed into place, so an interrupted build
leaves no half-written output; re-running rebuilds from scratch (it takes seconds).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellduality.errors import CellDualityError
from cellduality.paths import atomic_dir
from cellduality.tasks.base import TASKS, Example, Task, TaskContext, dumps, get_task
from cellduality.tasks.options import validate_options
from cellduality.validation import labelled_indices

if TYPE_CHECKING:  # pragma: no cover
    from datasets import DatasetDict

    from cellduality.sentences import CellSentenceDataset

FORMAT = "cellduality.tasks/1"
FOLDERS = ("primal", "dual", "rl", "rl_oracle")
RL_COLUMNS = ("id", "task", "prompt", "known", "unknown", "seed")
LINEAGE_FILES = ("inverse.json", "vocabulary.json")


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def _labelled_row(task: Task, example: Example, prompt: str, answer: str) -> dict[str, Any]:
    """A supervised row (primal or dual): the prompt, its reference answer and the whole example."""
    known, unknown = task.split(example)
    return {
        "id": example.id,
        "task": task.name,
        "prompt": prompt,
        "answer": answer,
        "known": dumps(known),
        "unknown": dumps(unknown),
        "target": dumps(example.target),
        "seed": example.seed,
        "meta": dumps(example.meta),
    }


def primal_row(task: Task, example: Example) -> dict[str, Any]:
    return _labelled_row(task, example, task.primal_prompt(example), task.render_answer(example.target))


def dual_row(task: Task, example: Example) -> dict[str, Any]:
    """Paper §3.3.1: prompt from ``(y*, x_k)``, answer ``x_u``."""
    known, unknown = task.split(example)
    return _labelled_row(task, example, task.dual_prompt(example.target, known, example.seed),
                         task.render_unknown(unknown))


def rl_row(task: Task, example: Example) -> dict[str, Any]:
    """An RL row: built from the prompt and the split only -- never from ``target``/``meta``."""
    known, unknown = task.split(example)
    return {
        "id": example.id,
        "task": task.name,
        "prompt": task.primal_prompt(example),
        "known": dumps(known),
        "unknown": dumps(unknown),
        "seed": example.seed,
    }


def rl_oracle_row(task: Task, example: Example) -> dict[str, Any]:
    return {**rl_row(task, example), "target": dumps(example.target)}


ROW_BUILDERS = {"primal": primal_row, "dual": dual_row, "rl": rl_row, "rl_oracle": rl_oracle_row}


# --------------------------------------------------------------------------------------------
# Mixing
# --------------------------------------------------------------------------------------------


def mixture_counts(sizes: Mapping[str, int], weights: Mapping[str, float] | None) -> dict[str, int]:
    """Rows per task in a weighted mixture of the same total size as the plain concatenation.

    Without weights every example is used once. With weights, task ``t`` gets a share
    ``w_t / sum(w)`` of ``sum(sizes)`` rows (sub-sampled, or re-used when it has fewer).
    """
    if not weights:
        return dict(sizes)
    total = sum(sizes.values())
    weight_sum = sum(weights.get(name, 1.0) for name in sizes)
    if weight_sum <= 0:
        raise CellDualityError("Task weights must not all be zero; pass --weight task=w with w > 0.")
    return {name: round(total * weights.get(name, 1.0) / weight_sum) for name in sizes}


def _select(n_available: int, n_wanted: int, rng: np.random.Generator) -> list[int]:
    """Indices of ``n_wanted`` rows out of ``n_available``: all once, then seeded repeats."""
    if n_available == 0 or n_wanted == 0:
        return []
    full, rest = divmod(n_wanted, n_available)
    chosen = list(np.tile(np.arange(n_available), full)) + list(rng.choice(n_available, rest, replace=False))
    return [int(i) for i in chosen]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def _load_cells(cells: CellSentenceDataset | str | Path) -> tuple[CellSentenceDataset, Path | None]:
    if isinstance(cells, (str, Path)):
        from cellduality.sentences import CellSentenceDataset

        path = Path(cells)
        return CellSentenceDataset.load(path), path
    path = getattr(cells, "path", None)
    return cells, Path(path) if path else None


def _splits(cells: CellSentenceDataset, seed: int) -> dict[str, list[int]]:
    splits = getattr(cells, "splits", None) or {}
    train = [int(i) for i in splits.get("train", [])]
    test = [int(i) for i in splits.get("test", [])]
    if train:
        return {"train": train, "test": test}
    order = np.random.default_rng(seed).permutation(len(cells.sentences))
    cut = int(round(0.8 * len(order)))
    return {"train": sorted(order[:cut].tolist()), "test": sorted(order[cut:].tolist())}


def _carve_validation(splits: dict[str, list[int]], fraction: float, seed: int) -> dict[str, list[int]]:
    """Move a seeded ``fraction`` of the training cells into a ``validation`` split."""
    if not 0.0 <= fraction < 1.0:
        raise CellDualityError(f"--validation-fraction must be in [0, 1), got {fraction}.")
    if not fraction:
        return splits
    train = splits["train"]
    n = int(round(fraction * len(train)))
    if n < 1 or n >= len(train):
        raise CellDualityError(f"--validation-fraction {fraction} leaves no validation or no training cells "
                               f"out of {len(train)}; choose another fraction.")
    chosen = set(np.random.default_rng([seed, 7]).choice(train, n, replace=False).tolist())
    return {**splits, "train": [i for i in train if i not in chosen], "validation": sorted(chosen)}


def _subsample(indices: list[int], limit: int | None, seed: int, name: str) -> list[int]:
    if not limit or len(indices) <= limit:
        return indices
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    return sorted(rng.choice(indices, limit, replace=False).tolist())


def make_tasks(
    cells: CellSentenceDataset,
    task_names: Sequence[str],
    train_indices: Sequence[int],
    *,
    label_key: str | None = None,
    task_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Task]:
    """Build each task with a context derived from the *training* cells only."""
    tasks: dict[str, Task] = {}
    for name in dict.fromkeys(task_names):
        if name not in TASKS:
            get_task(name)  # registers built-ins, then raises the one-line "unknown task" error
        cls = TASKS[name]
        opts = {k: v for k, v in options.items() if v is not None}
        if label_key:
            opts["label_key"] = label_key
        opts.update((task_options or {}).get(name, {}))
        # checked and converted before the data is read; only the options given, so a task's own
        # fallbacks (e.g. the label column `sentences` recorded) still apply to the others
        opts = validate_options(name, cls.options_model, opts).model_dump(exclude_unset=True)
        context = cls.context_from(cells, train_indices, **opts)
        tasks[name] = cls(context)
    return tasks


def build_task_datasets(
    cells: CellSentenceDataset | str | Path,
    task_names: Sequence[str],
    out_dir: str | Path,
    *,
    label_key: str | None = None,
    weights: Mapping[str, float] | None = None,
    seed: int = 0,
    max_genes: int | None = None,
    max_examples: int | None = None,
    task_options: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    validation_fraction: float = 0.0,
) -> dict[str, Any]:
    """Write ``OUT_DIR/{primal,dual,rl,rl_oracle}``, ``tasks.json`` and the lineage files.

    ``cells`` is a sentences folder or a loaded ``CellSentenceDataset``. ``weights`` mixes the
    *train* split of several tasks (the test split keeps every example once, for evaluation).
    ``max_examples`` caps the cells used per task and split (seeded sub-sample), ``max_genes`` the
    genes of a cell shown in prompts; ``task_options`` passes per-task options. Returns the
    ``tasks.json`` content. ``validation_fraction`` carves a seeded ``validation`` split out of
    the training cells (never taught, never trained on): hyperparameters and checkpoints are
    chosen there, so the test split is read once, for the final figures.
    """
    import datasets
    from datasets import Dataset, DatasetDict

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CellDualityError(f"{out} already exists and is not empty; choose a new folder or pass --overwrite.")
    if not task_names:
        raise CellDualityError("No task given; pass --task annotation (or generation, sensitivity, perturbation).")
    cells, sentences_dir = _load_cells(cells)
    splits = _carve_validation(_splits(cells, seed), validation_fraction, seed)
    tasks = make_tasks(cells, task_names, splits["train"], label_key=label_key, task_options=task_options,
                       max_genes=max_genes)
    if weights and set(weights) - set(tasks):
        raise CellDualityError(f"--weight names tasks that are not built: {sorted(set(weights) - set(tasks))}.")

    # cells without a label are left out of every labelled split, and counted (never a class "nan")
    usable = {split: {name: labelled_indices(cells, task.options.get("label_key"), idx) for name, task in tasks.items()}
              for split, idx in splits.items()}
    examples = {
        split: {name: task.make_examples(cells, _subsample(usable[split][name][0], max_examples, seed,
                                                           f"{name}:{split}"), seed)
                for name, task in tasks.items()}
        for split in splits
    }
    counts: dict[str, dict[str, int]] = {}
    selected: dict[str, list[tuple[str, Example]]] = {}
    for split, by_task in examples.items():
        wanted = (mixture_counts({n: len(e) for n, e in by_task.items()}, weights) if split == "train"
                  else {n: len(e) for n, e in by_task.items()})
        rng = np.random.default_rng(seed)
        rows = [(name, by_task[name][i]) for name in by_task for i in _select(len(by_task[name]), wanted[name], rng)]
        if split == "train":
            rows = [rows[i] for i in rng.permutation(len(rows))]
        selected[split] = rows
        counts[split] = {name: sum(1 for n, _ in rows if n == name) for name in by_task}
    if not selected["train"]:
        raise CellDualityError("No examples could be built from these cells; check the label/perturbation columns.")

    manifest = {
        "format": FORMAT,
        "tasks": {name: {"context": task.context.to_dict(), "options": task.options} for name, task in tasks.items()},
        "sentences_dir": str(sentences_dir.resolve()) if sentences_dir else None,
        "seed": seed,
        "weights": dict(weights or {}),
        "label_key": label_key,
        "max_genes": max_genes,
        "counts": counts,
        "unlabelled_cells": {split: {n: k for n, (_, k) in by.items() if k} for split, by in usable.items()},
    }
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # small folders: per-shard bars are noise
    try:
        with atomic_dir(out, "tasks build") as tmp:
            for folder, make_row in ROW_BUILDERS.items():
                DatasetDict({
                    split: Dataset.from_list([make_row(tasks[name], ex) for name, ex in rows]) if rows
                    else _empty(folder)
                    for split, rows in selected.items()
                }).save_to_disk(str(tmp / folder), num_shards=one_shard_if_empty(selected))
            _write_lineage(cells, sentences_dir, tmp)
            (tmp / "tasks.json").write_text(json.dumps(manifest, indent=1))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return manifest


def one_shard_if_empty(splits: Mapping[str, Any]) -> dict[str, int]:
    """``num_shards`` for ``save_to_disk``: an empty split saved with 0 shards cannot be loaded back."""
    return {name: 1 for name, rows in splits.items() if len(rows) == 0}


def _empty(folder: str) -> Any:
    from datasets import Dataset, Features, Value

    columns = {"primal": (*RL_COLUMNS[:3], "answer", "known", "unknown", "target", "seed", "meta"),
               "dual": (*RL_COLUMNS[:3], "answer", "known", "unknown", "target", "seed", "meta"),
               "rl": RL_COLUMNS, "rl_oracle": (*RL_COLUMNS, "target")}[folder]
    return Dataset.from_dict({c: [] for c in columns},
                             features=Features({c: Value("int64" if c == "seed" else "string") for c in columns}))


def _write_lineage(cells: CellSentenceDataset, sentences_dir: Path | None, dest: Path) -> None:
    """Copy ``inverse.json`` and ``vocabulary.json`` so every later stage carries its lineage."""
    for name in LINEAGE_FILES:
        source = sentences_dir / name if sentences_dir else None
        if source is not None and source.is_file():
            shutil.copy2(source, dest / name)
        elif name == "vocabulary.json":
            (dest / name).write_text(json.dumps(dict(cells.vocabulary)))
        elif getattr(cells, "inverse", None) is not None and hasattr(cells.inverse, "save"):
            cells.inverse.save(dest / name)


def load_tasks(tasks_dir: str | Path) -> dict[str, Task]:
    """Rebuild the tasks recorded in ``TASKS_DIR/tasks.json`` (or a model's ``cellduality.json``)."""
    path = Path(tasks_dir)
    manifest_path = path / "tasks.json" if path.is_dir() else path
    if not manifest_path.is_file():
        raise CellDualityError(f"{manifest_path} not found; point to a folder written by `cellduality tasks build`.")
    manifest = json.loads(manifest_path.read_text())
    if "tasks" in manifest and isinstance(manifest["tasks"], dict) and "tasks" in manifest["tasks"]:
        manifest = manifest["tasks"]  # a model's cellduality.json nests the tasks.json content
    return {
        name: get_task(name, TaskContext.from_dict(entry.get("context", {})), **entry.get("options", {}))
        for name, entry in manifest.get("tasks", {}).items()
    }


def load_task_datasets(tasks_dir: str | Path, folder: str) -> DatasetDict:
    """``datasets.load_from_disk(TASKS_DIR/folder)`` with a one-line error when it is missing."""
    from datasets import load_from_disk

    path = Path(tasks_dir) / folder
    if folder not in FOLDERS or not path.is_dir():
        raise CellDualityError(f"{path} is not a task dataset; expected one of {FOLDERS} under {tasks_dir}.")
    return load_from_disk(str(path))
