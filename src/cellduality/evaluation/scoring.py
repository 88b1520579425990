"""Score one task's predictions on its test rows -- the same code for models and baselines.

Classification tasks get accuracy, macro-F1 and the malformed rate. Generative tasks are scored
as populations in a shared embedding (:mod:`cellduality.evaluation.embeddings`):

* ``generation`` (Cell2Sentence): k-NN accuracy at k ∈ {3, 5, 10, 25} (classifier fitted on real
  *training* cells, predicting the requested type; a malformed cell counts as wrong), and GW,
  scFID, MMD and Wasserstein between the valid generated cells and the real *test* cells;
* ``perturbation`` (C2S-Scale): scFID, MMD and Wasserstein between generated and real perturbed
  test cells, per perturbation (``scfid/<perturbation>``) and averaged over perturbations.

A prediction for a generative task is either a gene list / sentence (``None`` = malformed) or,
for baselines that work in expression space, a row of an expression matrix.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellduality.evaluation import metrics as M
from cellduality.evaluation.embeddings import SentenceEmbedder


def _decode(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class TaskRows:
    """The primal rows of one task and split, with the JSON columns decoded."""

    task: str
    ids: list[str]
    prompts: list[str]
    known: list[dict]
    unknown: list[dict]
    targets: list[Any]
    seeds: list[int]

    @classmethod
    def from_dataset(cls, dataset: Any, task: str, max_examples: int | None = None, seed: int = 0) -> TaskRows:
        indices = [i for i, name in enumerate(dataset["task"]) if name == task]
        if max_examples is not None and len(indices) > max_examples:
            rng = np.random.default_rng(seed)
            indices = sorted(rng.choice(indices, max_examples, replace=False).tolist())
        rows = dataset.select(indices) if indices else dataset.select([])
        return cls(
            task=task,
            ids=list(rows["id"]),
            prompts=list(rows["prompt"]),
            known=[_decode(v) or {} for v in rows["known"]],
            unknown=[_decode(v) or {} for v in rows["unknown"]],
            targets=[_decode(v) for v in rows["target"]],
            seeds=[int(v) for v in rows["seed"]],
        )

    def __len__(self) -> int:
        return len(self.ids)

    def conditions(self, task: Any) -> list[str]:
        """What each example conditions on (cell type, perturbation) as canonical text."""
        return [task.render_unknown(u) for u in self.unknown]

    def cells(self, task: Any) -> list[list[str]]:
        """The whole input cell of each row, as the task rebuilds it from ``(x_k, x_u)``."""
        out = [task.input_cell(k, u) for k, u in zip(self.known, self.unknown, strict=True)]
        if any(c is None for c in out):
            raise ValueError(f"task '{task.name}' rebuilds no input cell (Task.input_cell); it has no cell baselines")
        return out


def score_classification(rows: TaskRows, predictions: Sequence[Any | None], labels: Sequence[str] = ()) -> dict:
    truth = [str(t) for t in rows.targets]
    return {
        "accuracy": M.accuracy(truth, predictions),
        "macro_f1": M.macro_f1(truth, predictions),
        "malformed_rate": float(np.mean([p is None for p in predictions])) if len(predictions) else M.NAN,
        "n": float(len(truth)),
    }


class GenerativeScorer:
    """Fits the embedding on real training cells once, then scores any set of predictions."""

    def __init__(self, task: Any, train: TaskRows, test: TaskRows, inverse: Any, embedding: Any = None) -> None:
        self.task, self.train, self.test = task, train, test
        self.embedder = SentenceEmbedder(inverse, embedding).fit(train.targets or test.targets)
        self.real_test = self.embedder.embed(test.targets)[0]
        self.test_conditions = test.conditions(task)
        self._real_train = None

    @property
    def real_train(self) -> np.ndarray:
        if self._real_train is None:
            self._real_train = self.embedder.embed(self.train.targets)[0]
        return self._real_train

    def embed_predictions(self, predictions: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding of the valid predictions and the validity mask (expression rows are all valid)."""
        if isinstance(predictions, np.ndarray) and predictions.ndim == 2:
            return self.embedder.transform_expression(predictions), np.ones(len(predictions), dtype=bool)
        return self.embedder.embed(list(predictions))

    def score(self, predictions: Sequence[Any] | np.ndarray) -> dict[str, float]:
        embedded, valid = self.embed_predictions(predictions)
        out = {"valid_rate": float(valid.mean()) if len(valid) else M.NAN, "n": float(len(valid))}
        conditions = np.asarray(self.test_conditions, dtype=object)[valid] if len(valid) else np.array([])
        if self.task.scored_per_condition:
            out.update(self._per_condition(embedded, conditions))
        else:
            out.update(self._generation(embedded, conditions, valid))
        return out

    def _generation(self, embedded: np.ndarray, conditions: np.ndarray, valid: np.ndarray) -> dict[str, float]:
        out = M.generation_metrics(self.real_test, embedded, gw=True) if len(embedded) else {
            k: M.NAN for k in ("scfid", "mmd", "wasserstein", "gw")}
        train_labels = self.train.conditions(self.task)
        geo = M.Geometry.of(self.real_train, embedded)
        for k in M.KNN_KS:
            acc = M.knn_accuracy(geo.real, train_labels, geo.generated, list(conditions), k, geometry=geo)
            # Malformed generations count as wrong: rescale the accuracy on valid cells to all requests.
            out[f"knn@{k}"] = acc * float(valid.mean()) if len(embedded) else (0.0 if len(valid) else M.NAN)
        return out

    def _per_condition(self, embedded: np.ndarray, conditions: np.ndarray) -> dict[str, float]:
        real_by: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.test_conditions):
            real_by[c].append(i)
        per: dict[str, dict[str, float]] = {}
        for condition, idx in sorted(real_by.items()):
            generated = embedded[conditions == condition] if len(embedded) else embedded
            geo = M.Geometry.of(self.real_test[idx], generated)
            per[condition] = {"scfid": M.scfid(geo), "mmd": M.mmd(geo), "wasserstein": M.wasserstein(geo)}
        out: dict[str, float] = {}
        for metric in ("scfid", "mmd", "wasserstein"):
            values = [v[metric] for v in per.values() if np.isfinite(v[metric])]
            out[metric] = float(np.mean(values)) if values else M.NAN
            out.update({f"{metric}/{c}": v[metric] for c, v in per.items()})
        return out
