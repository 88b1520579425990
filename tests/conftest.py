"""Shared fixtures: real data from ../shared/data (skipped with a clear reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellduality.paths import shared_data_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting collapse on a shared, oversubscribed CPU (a tiny model step
# measured 12x slower with 2 spinning threads than with 2 passive ones on this shared machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real single-cell data folder; skips the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared real data not found: set CELLDUALITY_DATA_DIR or place it at ../shared/data")
    return path


def shared_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"{relative} missing from {data_dir}")
    return path


@pytest.fixture(scope="session")
def pbmc_small():
    """scanpy's bundled pbmc68k_reduced (700 cells, ships with scanpy, works offline)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


# ---- fixtures shared by several modules (plain helpers: tests/helpers.py) ---------------------


@pytest.fixture(scope="module")
def pbmc_task(pbmc_small):
    """pbmc68k cells as sentences (top 32 genes) and the annotation task built on their train split."""
    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks.builders import make_tasks

    cells = build_cell_sentences(pbmc_small, top_k=32, label_keys=["bulk_labels"], seed=0)
    task = make_tasks(cells, ["annotation"], cells.splits["train"], max_genes=24)["annotation"]
    return cells, task


@pytest.fixture(scope="module")
def tasks_dir(pbmc_small, tmp_path_factory) -> Path:
    """A tiny tasks folder (annotation + generation, 12 examples each) on pbmc68k."""
    from cellduality.tasks import build_task_datasets
    from helpers import to_cells

    out = tmp_path_factory.mktemp("grpo") / "tasks"
    cells = to_cells(pbmc_small, "bulk_labels", top_k=24, raw=True)
    build_task_datasets(cells, ["annotation", "generation"], out, max_genes=8, seed=0, max_examples=12)
    return out


@pytest.fixture(scope="module")
def sft_dir(tasks_dir, tmp_path_factory) -> Path:
    """A `tiny` preset saved as a CellDuality model (stands in for the Stage-1 model)."""
    from helpers import save_tiny_model

    return save_tiny_model(tasks_dir, tmp_path_factory.mktemp("grpo") / "sft")


@pytest.fixture(scope="module")
def tiny_model(pbmc_task, tmp_path_factory):
    """A `tiny` random model saved as a CellDuality model of the pbmc annotation task: ``(model, prompts)``."""
    import torch

    from cellduality.inference.model import CellDualityModel
    from cellduality.models import load_model, save_cellduality_model
    from cellduality.tasks.base import format_response

    cells, task = pbmc_task
    prompts = [task.primal_prompt(ex) for ex in task.make_examples(cells, range(30), seed=0)]
    texts = prompts + [format_response("reasoning about genes", label) for label in task.context.labels]
    model, tokenizer = load_model("tiny", tokenizer_texts=texts, genes=sorted(task.context.genes))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fast") / "model"
    tasks = {"tasks": {"annotation": {"context": task.context.to_dict(), "options": task.options}}}
    save_cellduality_model(model, tokenizer, out, {"stage": "sft", "base_model": "tiny", "tasks": tasks})
    return CellDualityModel.load(out), prompts
