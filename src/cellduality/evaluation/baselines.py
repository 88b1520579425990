"""Classical baselines, computed from the same tasks folder and test split the models see.

Which baselines a task gets is the task's own decision (:meth:`cellduality.tasks.base.Task.baselines`);
the built-in tasks use the functions here:

* annotation / sensitivity: logistic regression and k-NN (k = 10) on the expression of the cell
  the model is shown (its prompt's ranked genes through the inverse model), trained on the train
  split;
* generation: a random real training cell of the requested type (a reference *ceiling*: real
  cells, right type) and a random real training cell of any type (*floor*);
* perturbation: "predict the control cell" (the prompt's control cell) and "control plus mean
  shift" (the control's expression plus the mean train-split difference perturbed − control of
  that perturbation, in expression space).

Every baseline is scored by :mod:`cellduality.evaluation.scoring`, exactly like a model.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cellduality.errors import CellDualityError
from cellduality.evaluation.scoring import GenerativeScorer, TaskRows, score_classification


def load_inverse(tasks_dir: str | Path) -> Any:
    """The tasks folder's ``inverse.json`` (``None`` when absent)."""
    from cellduality.sentences import InverseModel

    path = Path(tasks_dir) / "inverse.json"
    return InverseModel.load(path) if path.is_file() else None


def load_rows(tasks_dir: str | Path, task: str, split: str, max_examples: int | None = None, seed: int = 0) -> TaskRows:
    from cellduality.tasks.builders import load_task_datasets

    data = load_task_datasets(tasks_dir, "primal")
    if split not in data:
        raise CellDualityError(f"{tasks_dir}/primal has no '{split}' split; rebuild it with `cellduality tasks build`.")
    return TaskRows.from_dataset(data[split], task, max_examples, seed)


def classification_baselines(train: TaskRows, test: TaskRows, inverse: Any, seed: int = 0, *,
                             task: Any) -> dict[str, dict]:
    """Logistic regression and 10-NN on the expression of the shown cell (rank weights without inverse).

    The shown cell is the task's :meth:`~cellduality.tasks.base.Task.input_cell` of each row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    x_train, x_test = _features(train.cells(task), test.cells(task), inverse)
    y_train = np.asarray([str(t) for t in train.targets])
    out: dict[str, dict] = {}
    if len(set(y_train)) < 2 or not len(test):
        return out
    models = {
        "logreg": LogisticRegression(max_iter=2000, random_state=seed),
        "knn10": KNeighborsClassifier(n_neighbors=min(10, len(y_train))),
    }
    for name, model in models.items():
        predicted = model.fit(x_train, y_train).predict(x_test)
        out[name] = score_classification(test, list(predicted))
    return out


def _features(train_cells: list[list[str]], test_cells: list[list[str]], inverse: Any) -> tuple[np.ndarray, np.ndarray]:
    if inverse is not None:
        x_train = np.asarray(inverse.to_expression(train_cells), dtype=np.float64)
        x_test = np.asarray(inverse.to_expression(test_cells), dtype=np.float64)
    else:  # no inverse model: rank weights 1/log2(1 + rank), the RWJS weights
        from sklearn.feature_extraction import DictVectorizer

        from cellduality.rewards import rank_weights

        vectorizer = DictVectorizer()
        x_train = vectorizer.fit_transform([rank_weights(c) for c in train_cells])
        x_test = vectorizer.transform([rank_weights(c) for c in test_cells])
    return x_train, x_test


def generation_baselines(scorer: GenerativeScorer, seed: int = 0) -> dict[str, dict]:
    """Random real training cell of the requested type (ceiling) and of any type (floor)."""
    rng = np.random.default_rng(seed)
    train_conditions = scorer.train.conditions(scorer.task)
    by_condition: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(train_conditions):
        by_condition[c].append(i)
    n_train = len(train_conditions)
    if not n_train:
        return {}
    same, anyone = [], []
    for condition in scorer.test_conditions:
        pool = by_condition.get(condition)
        same.append(scorer.train.targets[pool[rng.integers(len(pool))]] if pool else None)
        anyone.append(scorer.train.targets[int(rng.integers(n_train))])
    return {"real_cell_same_type": scorer.score(same), "real_cell_any_type": scorer.score(anyone)}


def perturbation_baselines(scorer: GenerativeScorer) -> dict[str, dict]:
    """"Predict the control cell" and "control plus the mean train shift of that perturbation"."""
    test, train = scorer.test, scorer.train
    controls = [k.get("control") or [] for k in test.known]
    out = {"control_cell": scorer.score(controls)}
    if len(train):
        expr = scorer.embedder.expression
        train_shift = expr(train.targets) - expr([k.get("control") or [] for k in train.known])
        shifts: dict[str, np.ndarray] = {}
        train_conditions = np.asarray(train.conditions(scorer.task), dtype=object)
        for condition in set(train_conditions):
            shifts[condition] = train_shift[train_conditions == condition].mean(axis=0)
        zero = np.zeros(train_shift.shape[1])
        shifted = expr(controls) + np.stack([shifts.get(c, zero) for c in scorer.test_conditions]) if len(test) else \
            expr(controls)
        out["control_plus_mean_shift"] = scorer.score(shifted)
    return out


def run_baselines(
    tasks_dir: str | Path,
    *,
    tasks: list[str] | None = None,
    seed: int = 0,
    max_examples: int | None = None,
    embedding: Any = None,
    scorers: dict[str, GenerativeScorer] | None = None,
    split: str = "test",
) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {baseline: {metric: value}}}`` on the test split of ``tasks_dir``.

    ``scorers`` lets :func:`~cellduality.evaluation.evaluate.evaluate_generate` share its fitted
    embeddings so models and baselines are scored in the very same space.
    """
    from cellduality.tasks import load_tasks

    loaded = load_tasks(tasks_dir)
    inverse = load_inverse(tasks_dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in tasks or list(loaded):
        task = loaded[name]
        test = load_rows(tasks_dir, name, split, max_examples, seed)
        if not len(test):
            continue
        train = load_rows(tasks_dir, name, "train")
        scorer = None
        if task.kind == "generative":
            scorer = (scorers or {}).get(name) or GenerativeScorer(task, train, test, inverse, embedding)
        results[name] = task.baselines(train, test, inverse=inverse, scorer=scorer, seed=seed)
    return results
