"""One inference entry point for every task, dispatched through the task's declarations (#11).

:func:`predict` never names a task. It reads from the task: :attr:`~cellduality.tasks.base.Task.cell_input`
(which input field holds a user's cell, if any), :meth:`~cellduality.tasks.base.Task.inference_inputs`
and :meth:`~cellduality.tasks.base.Task.inference_input` (what else the user gives, checked
against what the model knows), :attr:`~cellduality.tasks.base.Task.kind` (a label per cell, or a
generated cell that the dual reads back) and :attr:`~cellduality.tasks.base.Task.prediction_key`
(where the result goes). A plug-in task therefore predicts with no change here; ``annotate``,
``predict_sensitivity``, ``perturb`` and ``cd.tl.predict`` are thin layers over it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cellduality.errors import CellDualityError
from cellduality.inference.predict import (
    KEY,
    METHODS,
    _as_model,
    _check_overlap,
    _classify,
    _prepare,
    _respond,
    cell_examples,
    model_sentences,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from cellduality.inference.model import CellDualityModel
    from cellduality.tasks.base import Task

PER_CELL = "per cell"
"""What ``.uns`` records for an input given one value per cell."""


def sentence_option_names() -> tuple[str, ...]:
    """The options of :func:`cellduality.sentences.to_sentences` a caller may pass (``layer``, ``gene_map``, ...)."""
    from cellduality.sentences import to_sentences

    return tuple(p.name for p in inspect.signature(to_sentences).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


def inputs_per_cell(task: Task, values: Mapping[str, Any], n: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The task's input fields for each of ``n`` cells, and the run record of the inputs.

    Each value of :meth:`Task.inference_inputs` is one value for all cells (a string) or one per cell
    (a list, array or ``pandas.Series`` of length ``n``, e.g. an ``.obs`` column); each distinct
    value is checked once by :meth:`Task.inference_input`.
    """
    names = task.inference_inputs()
    missing = [name for name in names if name not in values]
    if missing:
        raise CellDualityError(f"Task '{task.name}' needs {', '.join(f'{m}=...' for m in missing)} besides the cells.")
    columns: dict[str, list[str]] = {}
    record: dict[str, str] = {}
    for name in names:
        value = values[name]
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            columns[name], record[name] = [str(value)] * n, str(value)
            continue
        many = [str(v) for v in value]
        if len(many) != n:
            raise CellDualityError(f"{name}: {len(many)} values for {n} cells; give one value, or one per cell.")
        columns[name], record[name] = many, PER_CELL
    checked: dict[tuple[str, ...], dict[str, Any]] = {}
    rows = []
    for i in range(n):
        combo = tuple(columns[name][i] for name in names)
        if combo not in checked:
            checked[combo] = task.inference_input(dict(zip(names, combo, strict=True)))
        rows.append(checked[combo])
    return rows, record


def check_label_options(task: Task, method: str, explain: bool, explain_least_confident: int) -> None:
    """The labelling options (a method other than ``"fast"``, the explain ones) only for a classification task."""
    if task.kind != "classification" and (method != "fast" or explain or explain_least_confident):
        raise CellDualityError(f"method, explain and explain_least_confident apply to classification tasks; "
                               f"'{task.name}' is {task.kind} (its reasoning is always written).")


def predict(
    adata: AnnData,
    model: CellDualityModel | str,
    task: str,
    *,
    key: str = KEY,
    copy: bool = True,
    device: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    min_overlap: float = 0.5,
    false_claims: str = "mark",
    tasks_dir: str | None = None,
    temperature: float | None = None,
    copy_aware: bool = True,
    method: str = "fast",
    n_samples: int = 4,
    explain: bool = False,
    explain_least_confident: int = 0,
    direct: bool | None = None,
    progress: Any = None,
    warn: Any = None,
    **inputs: Any,
) -> AnnData:
    """Run ``task`` of ``model`` on every cell of ``adata``; results under ``key`` (see the module docstring).

    ``inputs``: the task's own inputs (:meth:`Task.inference_inputs`, e.g. ``drug=`` for
    sensitivity, ``perturbation=`` for perturbation; one value or one per cell) and the sentence
    options (``layer``, ``gene_id_column``, ``gene_map``, ...). Classification tasks write
    ``.obs[f"{key}_{prediction_key}"]`` and ``_confidence`` by ``method`` (``"fast"``: likelihood;
    ``"rerank"``: ``n_samples`` reasoned answers kept by the duality, sampled at ``temperature``,
    default 0.8). Generative tasks write a generated cell per cell, read back by the dual
    (``temperature=None``: greedy). ``max_new_tokens`` defaults to 160 (labels) or 256 (cells).
    ``copy_aware`` (default on): reasoning is decoded copy-aware, so a rank it states for a gene of
    the input cell is that gene's rank (:attr:`CellDualityModel.copy_aware`).
    Returns the AnnData written into: ``adata`` itself with ``copy=False``, else a copy.
    """
    if method not in METHODS:
        raise CellDualityError(f"Unknown method '{method}'; choose one of: {', '.join(METHODS)}.")
    if explain_least_confident < 0:
        raise CellDualityError("--explain-least-confident must be 0 or more.")
    mdl = _as_model(model, device)
    mdl.copy_aware = copy_aware
    found = mdl.task(task)
    check_label_options(found, method, explain, explain_least_confident)
    declared = found.inference_inputs()
    values = {name: inputs.pop(name) for name in declared if name in inputs}
    unknown = sorted(set(inputs) - set(sentence_option_names()))
    if unknown:
        takes = ", ".join(f"{n}=" for n in declared) or "no inputs besides the cells"
        raise CellDualityError(f"Unknown option {', '.join(unknown)} for task '{found.name}'; it takes {takes} "
                               f"and the sentence options {', '.join(sentence_option_names())}.")
    out = _prepare(adata, copy)
    rows, record = inputs_per_cell(found, values, out.n_obs)
    if found.cell_input is None:
        cells: list[Any] = [None] * out.n_obs
        overlap: dict[str, Any] = {}
    else:
        cells, overlap = model_sentences(out, found, seed, **inputs)
        _check_overlap(overlap, cells, min_overlap)
        found = found.posed_on(cells)  # as adapt poses it: e.g. `hide: rare` counts rarity among these cells
    examples = cell_examples(found, out.obs_names, cells, rows, seed)
    common = {"key": key, "batch_size": batch_size, "seed": seed, "false_claims": false_claims,
              "tasks_dir": tasks_dir}
    if found.kind == "classification":
        fast = {"explain": explain, "explain_least_confident": explain_least_confident, "direct": direct,
                "progress": progress, "warn": warn}
        return _classify(out, mdl, found, examples, overlap, record, n_samples=n_samples,
                         temperature=0.8 if temperature is None else temperature,
                         max_new_tokens=max_new_tokens or 160, method=method, fast=fast, **common)
    return _respond(out, mdl, found, examples, overlap, record, temperature=temperature,
                    max_new_tokens=max_new_tokens or 256, **common)


__all__ = ["PER_CELL", "check_label_options", "inputs_per_cell", "predict", "sentence_option_names"]
