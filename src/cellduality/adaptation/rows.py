"""A user's unlabelled cells -> the duality-RL prompts of an adaptation tasks folder.

The rows are the model's own tasks posed on the user's cells, ranked *within the model's gene
panel* exactly as inference ranks them (:func:`cellduality.inference.predict.model_sentences`),
so a prompt during adaptation looks like a prompt at annotation time. Only what the duality
reward needs is written (:func:`cellduality.tasks.builders.rl_row`: prompt, ``x_k``, ``x_u``,
seed); no ``.obs`` label is ever read, so labels present in the file cannot leak into training
(a test scrambles them and gets identical rows). The only ``.obs`` columns read are the ones the
user names: the drug (sensitivity) and the control marker (perturbation).

The folder is a regular tasks folder (``tasks.json`` with the model's task contexts, ``rl/``,
lineage files), so Stage 2 (:func:`cellduality.training.grpo.run_grpo`) trains on it unchanged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellduality.errors import CellDualityError
from cellduality.tasks.base import Example, Task, dumps
from cellduality.tasks.text import stable_seed

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

ADAPTABLE = ("annotation", "sensitivity", "perturbation")
"""Tasks whose prompts can be posed on a user's cells without labels (generation needs none of them)."""

MIN_CELLS = 20
"""Fewer usable cells than this is refused: GRPO would see the same handful of prompts hundreds of
times and over-fit them, and the label-free diagnostics would rest on too few cells to mean anything."""


@dataclass
class AdaptationRows:
    """The RL rows of the user's cells, with what was left out and why."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    examples: dict[str, list[Example]] = field(repr=False)
    n_cells: int = 0
    skipped_few_genes: int = 0
    overlap: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict, repr=False)
    """The tasks as posed on these cells (:meth:`Task.posed_on`); the diagnostics split with them."""

    def digest(self) -> str:
        """Identifies the rows (and so the input cells and options) for ``--resume``."""
        import hashlib

        return hashlib.sha256(dumps(self.rows).encode()).hexdigest()[:16]


def adaptation_tasks(tasks: Mapping[str, Task], *, drug_key: str | None, drug: str | None,
                     control_key: str | None) -> list[str]:
    """The model's tasks that the user's cells can pose: annotation when it has it, the others when asked."""
    wanted = ["annotation"] if "annotation" in tasks else []
    if drug_key or drug:
        wanted.append("sensitivity")
    if control_key:
        wanted.append("perturbation")
    missing = [t for t in wanted if t not in tasks]
    if missing:
        raise CellDualityError(
            f"This model was not trained on {', '.join(missing)}; it knows {', '.join(sorted(tasks))}. "
            "Drop the option that asks for it (--drug-key/--drug for sensitivity, --control-key for perturbation).")
    if not wanted:
        raise CellDualityError(f"This model knows {', '.join(sorted(tasks))} but not annotation; pass --drug-key "
                               "(sensitivity) or --control-key (perturbation) to say what to adapt.")
    return wanted


def _cell_examples(task: Task, ids: list[str], cells: list[list[str]], extras: list[dict[str, Any]],
                   seed: int) -> tuple[list[Example], int]:
    """Examples as :meth:`InpaintingTask.make_examples` makes them (same ids and seeds), without a target."""
    examples, skipped = [], 0
    for cell_id, genes, extra in zip(ids, cells, extras, strict=True):
        if len(genes) < 2:
            skipped += 1
            continue
        examples.append(Example(id=f"{task.name}:{cell_id}", task=task.name, input={"cell": genes, **extra},
                                target=None, seed=stable_seed(seed, task.name, cell_id), meta={"cell_id": cell_id}))
    return examples, skipped


def _drugs(adata: AnnData, task: Task, drug_key: str | None, drug: str | None) -> list[dict[str, str]]:
    known = list(task.context.drugs)
    if drug_key:
        if drug_key not in adata.obs.columns:
            raise CellDualityError(f"--drug-key '{drug_key}' is not a column of .obs; columns: "
                                   f"{', '.join(map(str, adata.obs.columns[:12]))}.")
        values = [str(v) for v in adata.obs[drug_key]]
    else:
        values = [str(drug)] * adata.n_obs
    unknown = sorted(set(values) - set(known)) if known else []
    if unknown:
        raise CellDualityError(f"Drug(s) {', '.join(unknown[:5])} unknown to this model; it was trained on "
                               f"{', '.join(known)}.")
    return [{"drug": v} for v in values]


def _perturbation_examples(adata: AnnData, task: Task, cells: list[list[str]], control_key: str,
                           control_value: str, seed: int) -> tuple[list[Example], int]:
    """Each control cell posed with one of the model's perturbations (seeded choice per cell)."""
    from cellduality.tasks.perturbation import Perturbation
    from cellduality.tasks.text import rng_for

    if control_key not in adata.obs.columns:
        raise CellDualityError(f"--control-key '{control_key}' is not a column of .obs.")
    is_control = (adata.obs[control_key].astype(str) == control_value).to_numpy()
    if not is_control.any():
        raise CellDualityError(f"No cell has {control_key} == '{control_value}'; pass the value that marks "
                               "control cells with --control-value.")
    options = [p for p in (Perturbation.parse(t) for t in task.context.perturbations)
               if p is not None and p.kind != "control"]
    if not options:
        raise CellDualityError("This model's perturbation task knows no perturbation to pose on control cells.")
    examples, skipped = [], 0
    for name, genes, control in zip(adata.obs_names, cells, is_control, strict=True):
        if not control:
            continue
        if len(genes) < 2:
            skipped += 1
            continue
        cell_id = str(name)
        example_seed = stable_seed(seed, task.name, cell_id)
        chosen = options[rng_for(example_seed, "perturbation").randrange(len(options))]
        examples.append(Example(id=f"{task.name}:{cell_id}", task=task.name,
                                input={"control": genes[:task.max_genes], "perturbation": chosen.to_dict()},
                                target=None, seed=example_seed, meta={"cell_id": cell_id}))
    return examples, skipped


def check_cells(adata: Any) -> None:
    """One-line errors for inputs that cannot be adapted to (before any ranking)."""
    from anndata import AnnData

    if not isinstance(adata, AnnData):
        raise CellDualityError(f"adapt needs an AnnData (or an .h5ad path), not {type(adata).__name__}.")
    if adata.n_obs < MIN_CELLS:
        raise CellDualityError(f"Adaptation needs at least {MIN_CELLS} cells; got {adata.n_obs}. "
                               "Pass all your cells (the labels are not needed).")
    if adata.n_vars == 0:
        raise CellDualityError("The AnnData has no genes (.var is empty).")


def build_rows(adata: AnnData, tasks: Mapping[str, Task], *, seed: int = 0, drug_key: str | None = None,
               drug: str | None = None, control_key: str | None = None, control_value: str = "control",
               max_cells: int | None = None, min_overlap: float = 0.5,
               sentence_options: Mapping[str, Any] | None = None, recount: bool = True) -> AdaptationRows:
    """The RL rows of ``adata`` for the model's ``tasks`` (no label read; see the module docstring).

    ``recount``: pose each task on these cells (:meth:`Task.posed_on`, e.g. ``hide: rare`` counts
    which genes are rare among *these* cells); ``False`` keeps the statistics of the model's training data.
    """
    import numpy as np

    from cellduality.inference.predict import model_sentences
    from cellduality.tasks.builders import rl_row

    check_cells(adata)
    names = adaptation_tasks(tasks, drug_key=drug_key, drug=drug, control_key=control_key)
    if max_cells is not None and adata.n_obs > max_cells:
        keep = np.sort(np.random.default_rng([seed, 11]).choice(adata.n_obs, max_cells, replace=False))
        adata = adata[keep]
    ids = [str(n) for n in adata.obs_names]
    if len(set(ids)) != len(ids):
        raise CellDualityError("Cell names (.obs_names) are not unique; call adata.obs_names_make_unique() first.")
    panel = max((tasks[n] for n in names), key=lambda t: t.max_genes)  # one ranking serves every task
    cells, overlap = model_sentences(adata, panel, seed, **dict(sentence_options or {}))
    if not any(cells):
        raise CellDualityError(f"None of your cells expresses any of the model's {overlap['model_genes']} genes; "
                               "check gene identifiers (symbols vs Ensembl ids: --gene-map, species: --orthologs).")
    if overlap["overlap"] < min_overlap:
        raise CellDualityError(
            f"Only {overlap['model_genes_in_data']} of the model's {overlap['model_genes']} genes "
            f"({overlap['overlap']:.0%}) are expressed in your cells (threshold {min_overlap:.0%}); check gene "
            "identifiers (symbols, species) or lower --min-overlap.")
    if recount:
        tasks = {**tasks, **{name: tasks[name].posed_on(cells) for name in names}}
    examples: dict[str, list[Example]] = {}
    skipped = 0
    for name in names:
        task = tasks[name]
        if name == "perturbation":
            examples[name], lost = _perturbation_examples(adata, task, cells, str(control_key), control_value, seed)
        else:
            extras = _drugs(adata, task, drug_key, drug) if name == "sensitivity" else [{}] * len(ids)
            examples[name], lost = _cell_examples(task, ids, [c[:task.max_genes] for c in cells], extras, seed)
        skipped = max(skipped, lost)
    usable = max(len(e) for e in examples.values())
    if usable < MIN_CELLS:
        raise CellDualityError(f"Only {usable} of your {len(ids)} cells express at least two of the model's genes; "
                               f"adaptation needs {MIN_CELLS}. Check gene identifiers (--gene-map, --orthologs).")
    rows = [rl_row(tasks[name], ex) for name in names for ex in examples[name]]
    order = np.random.default_rng([seed, 13]).permutation(len(rows))
    return AdaptationRows(rows=[rows[i] for i in order], counts={n: len(e) for n, e in examples.items()},
                          examples=examples, n_cells=len(ids), skipped_few_genes=skipped, overlap=overlap,
                          tasks={name: tasks[name] for name in names})


def write_tasks_folder(rows: AdaptationRows, model_dir: str | Path, out: str | Path,
                       adaptation: Mapping[str, Any]) -> Path:
    """Write the adaptation tasks folder ``out`` (all-or-nothing): ``tasks.json``, ``rl/``, lineage files.

    ``tasks.json`` keeps *every* task of the model with its context (so the adapted model still
    knows all of them) and records ``adaptation`` (the data and budget) for the model card.
    """
    from datasets import Dataset, DatasetDict

    from cellduality.models.loading import LINEAGE_FILES, read_model_info
    from cellduality.outputs import atomic_dir
    from cellduality.tasks.builders import FORMAT

    model_tasks = read_model_info(model_dir).get("tasks") or {}
    manifest = {
        "format": FORMAT,
        "tasks": model_tasks.get("tasks", {}),
        "sentences_dir": None,
        "seed": adaptation.get("seed", 0),
        "weights": {},
        "label_key": None,
        "max_genes": model_tasks.get("max_genes"),
        "counts": {"train": rows.counts},
        "adaptation": dict(adaptation),
    }
    with atomic_dir(out, "adapt tasks") as tmp:
        DatasetDict({"train": Dataset.from_list(rows.rows)}).save_to_disk(str(tmp / "rl"))
        for name in LINEAGE_FILES:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        (tmp / "tasks.json").write_text(json.dumps(manifest, indent=1))
    return Path(out)
