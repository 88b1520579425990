"""Plain helpers shared by several test modules (fixtures live in ``conftest.py``, which imports these).

Test modules import them as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``),
never from another test module: importing a test module re-collects its tests and its fixtures.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellduality.inference.model import CellDualityModel
from cellduality.tasks.annotation import AnnotationTask
from cellduality.tasks.base import format_response
from cellduality.tasks.text import genes_of

# ---- cells as the task builders read them (test_builders and friends) -----------------------


@dataclass
class Cells:
    sentences: list[str]
    obs: pd.DataFrame
    meta: dict
    vocabulary: dict[str, int]
    splits: dict = field(default_factory=dict)


def to_cells(adata, label_key=None, top_k=64, raw=False, symbols=None, **meta) -> Cells:
    """Rank genes per cell (most expressed first), as `cellduality sentences` does."""
    matrix = adata.raw.X if raw else adata.X
    names = np.asarray(adata.raw.var_names if raw else (symbols if symbols is not None else adata.var_names))
    matrix = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
    sentences = []
    for row in matrix:
        order = np.argsort(-row, kind="stable")[:top_k]
        sentences.append(" ".join(str(names[j]).upper() for j in order if row[j] > 0 or not raw))
    vocabulary = Counter(g for s in sentences for g in set(s.split()))
    rng = np.random.default_rng(0).permutation(len(sentences))
    cut = int(0.8 * len(sentences))
    return Cells(sentences, adata.obs.astype(str), {"default_label_key": label_key, "source": "test", **meta},
                 dict(vocabulary), {"train": sorted(rng[:cut].tolist()), "test": sorted(rng[cut:].tolist())})


# ---- SFT-format rows from real cells (test_sft_data, test_models, test_tokenizer, test_sft) ----

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


# ---- a stand-in dual policy for the pbmc annotation task (inference and duality tests) -------


def class_profiles(cells, task) -> dict[str, list[str]]:
    """Per label, genes ordered by how often they appear in that label's training cells."""
    profiles: dict[str, Counter] = {label: Counter() for label in task.context.labels}
    labels = cells.obs["bulk_labels"].astype(str).to_numpy()
    for i in cells.splits["train"]:
        profiles[labels[i]].update(genes_of(cells.sentences[i], 24))
    return {label: [g for g, _ in c.most_common(60)] for label, c in profiles.items()}


def knowledge_dual(task, profiles):
    """A stand-in dual policy: fills masked genes with the named type's most frequent unseen genes."""
    labels = sorted(task.context.labels, key=len, reverse=True)

    def dual(prompts: list[str]) -> list[str]:
        outs = []
        for p in prompts:
            label = next(lab for lab in labels if lab in p)
            n_hidden = int(re.search(r"(\d+) (?:genes hidden|masked)", p).group(1))
            seen = set(p.split())
            guess = [g for g in profiles[label] if g not in seen][:n_hidden]
            outs.append(format_response("inpainting", " ".join(guess)))
        return outs

    return dual


class FakeModel(CellDualityModel):
    """A CellDualityModel whose generator is a stand-in policy (no weights needed)."""

    def __init__(self, tasks, sample, dual):
        super().__init__(path=Path("fake"), model=None, tokenizer=None, info={}, tasks=tasks)
        self._sample, self._dual = sample, dual

    def generator(self, *, do_sample: bool = False, **_: object):
        return self._sample if do_sample else self._dual


# ---- models and the command line ------------------------------------------------------------


def save_tiny_model(tasks_dir: Path, out: Path) -> Path:
    """A random `tiny` preset saved as a CellDuality model of ``tasks_dir``'s tasks, with its lineage
    (stands in for the Stage-1 model: its tokenizer knows the prompts, answers and genes)."""
    from datasets import load_from_disk

    from cellduality.models import load_model, save_cellduality_model

    primal = load_from_disk(str(Path(tasks_dir) / "primal"))["train"]
    vocabulary = json.loads((Path(tasks_dir) / "vocabulary.json").read_text())
    model, tokenizer = load_model("tiny", tokenizer_texts=list(primal["prompt"]) + list(primal["answer"]),
                                  genes=vocabulary)
    save_cellduality_model(model, tokenizer, out, {"stage": "sft", "base_model": "tiny"}, lineage_dir=tasks_dir)
    return out


def run_cli(args, capsys) -> tuple[int, str, str]:
    """``cellduality ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    from cellduality.cli.main import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
