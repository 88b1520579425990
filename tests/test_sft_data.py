"""SFT-format test data from real cells (scanpy's bundled pbmc68k_reduced), shared by the model tests.

Rows follow the contract ``cellduality teach`` writes (architecture.md §4): a ``DatasetDict`` with
``prompt``, ``completion``, ``task``, ``direction``, ``id`` and ``tasks.json`` /
``inverse.json`` / ``vocabulary.json`` beside it. Prompts come from the real annotation task
templates, so the texts carry real gene symbols (``HLA-DRA``, ``RP11-782C8.1``), newlines and
the ``<think>``/``<answer>`` format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cellduality.tasks.annotation import AnnotationTask
from cellduality.tasks.base import format_response

N_TOP = 16


def sft_rows(adata, n_cells: int | None = None) -> tuple[list[dict[str, str]], list[str]]:
    """Primal and dual annotation rows for the first ``n_cells`` cells, and the gene vocabulary."""
    raw = adata.raw
    matrix = raw.X.toarray() if hasattr(raw.X, "toarray") else np.asarray(raw.X)
    genes = np.asarray(raw.var_names)
    labels = sorted(adata.obs["bulk_labels"].astype(str).unique())
    rows = []
    for i in range(n_cells or adata.n_obs):
        top = genes[np.argsort(-matrix[i], kind="stable")[:N_TOP]]
        label = str(adata.obs["bulk_labels"].iloc[i])
        prompt = AnnotationTask.primal_templates[i % 3].format(cell=" ".join(top), labels=", ".join(labels))
        reasoning = f"The top genes {top[0]}, {top[1]} and {top[2]} are typical of {label} cells."
        rows.append(
            {"prompt": prompt, "completion": format_response(reasoning, label), "task": "annotation",
             "direction": "primal", "id": f"cell{i}"}
        )
        masked = " ".join("___" if j in (1, 4) else g for j, g in enumerate(top))
        dual = AnnotationTask.dual_templates[i % 2].format(label=label, n_hidden=2, masked=masked)
        rows.append(
            {"prompt": dual, "completion": format_response(f"{label} cells express them.", f"{top[1]} {top[4]}"),
             "task": "annotation", "direction": "dual", "id": f"cell{i}-dual"}
        )
    return rows, sorted(set(genes))


def make_sft_folder(adata, path: Path, n_cells: int = 120) -> Path:
    """Write an SFT data folder (train/test) for ``n_cells`` real cells into ``path``."""
    from datasets import Dataset, DatasetDict

    rows, genes = sft_rows(adata, n_cells)
    cut = int(len(rows) * 0.9)
    DatasetDict({"train": Dataset.from_list(rows[:cut]), "test": Dataset.from_list(rows[cut:])}).save_to_disk(
        str(path)
    )
    (path / "vocabulary.json").write_text(json.dumps({g: 1 for g in genes}))
    (path / "tasks.json").write_text(json.dumps({"tasks": {"annotation": {"context": {"genes": genes}}}}))
    (path / "inverse.json").write_text(json.dumps({"kind": "test-inverse"}))
    return path


def test_sft_folder_follows_the_teach_contract(pbmc_small, tmp_path):
    from datasets import load_from_disk

    folder = make_sft_folder(pbmc_small, tmp_path / "sft", n_cells=10)
    data = load_from_disk(str(folder))
    assert set(data) == {"train", "test"}
    assert {"prompt", "completion", "task", "direction", "id"} <= set(data["train"].column_names)
    assert {r["direction"] for r in data["train"]} == {"primal", "dual"}
    assert all(r["completion"].startswith("<think>") for r in data["train"])
