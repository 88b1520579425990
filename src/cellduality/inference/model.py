"""A trained CellDuality model as one object: weights, tokenizer, tasks and data lineage.

A CellDuality model folder is a standard Hugging Face folder plus ``cellduality.json`` (the tasks
it was trained on, with their label sets and gene vocabulary) and the ``inverse.json`` /
``vocabulary.json`` of its training data. Loading it here gives everything inference needs:
the tasks (to write prompts and parse answers), a batched ``generate`` callable, and the
inverse model to turn generated cell sentences back into expression.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellduality.errors import CellDualityError, ModelError
from cellduality.tasks.base import Task

GenerateFn = Callable[[list[str]], list[str]]


@dataclass
class CellDualityModel:
    """A loaded model with its tasks; build it with :meth:`load`."""

    path: Path
    model: Any
    tokenizer: Any
    info: dict[str, Any]
    tasks: dict[str, Task]
    copy_aware: bool = True
    """Decode reasoning copy-aware (:mod:`cellduality.models.copy_ranks`): ranks stated for genes of
    the input cell are copied from it, so an explanation never misstates one. Off only to measure
    the model's own text."""
    _inverse: Any = field(default=None, repr=False)
    _knowledge: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> CellDualityModel:
        """Load a model folder written by ``cellduality sft`` or ``cellduality grpo``.

        ``device=None``: the GPU when there is one (:func:`~cellduality.models.loading.inference_device`).
        """
        from cellduality.models import load_model, read_model_info
        from cellduality.models.loading import inference_device

        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"Model folder {folder} does not exist; pass a folder written by `cellduality sft` or `grpo`.")
        info = read_model_info(folder)  # one-line ModelError when it is not a CellDuality model
        tasks = model_tasks(folder)
        model, tokenizer = load_model(str(folder), device=device or inference_device())
        return cls(path=folder, model=model, tokenizer=tokenizer, info=info, tasks=tasks)

    def task(self, name: str) -> Task:
        """The model's task ``name``, or a one-line error listing the tasks it knows."""
        return find_task(self.tasks, name)

    def generator(
        self,
        *,
        max_new_tokens: int = 256,
        do_sample: bool = False,
        temperature: float = 1.0,
        batch_size: int = 32,
        seed: int | None = None,
        require_reasoning: bool = False,
        copy_aware: bool | None = None,
    ) -> GenerateFn:
        """A batched ``list[prompt] -> list[completion]`` callable over this model (``require_reasoning``:
        the ``<think>`` block may not be left empty, see :class:`~cellduality.models.generation.RequireReasoning`;
        ``copy_aware``: default :attr:`copy_aware`)."""
        from cellduality.faithfulness import copy_aware_decoding
        from cellduality.models import make_generate_fn
        from cellduality.tasks.base import gene_vocabulary

        copy = self.copy_aware if copy_aware is None else copy_aware
        decoding = (copy_aware_decoding(self.tasks, self.training_knowledge) if copy
                    else {"genes": gene_vocabulary(self.tasks)})
        return make_generate_fn(
            self.model,
            self.tokenizer,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            batch_size=batch_size,
            seed=seed,
            require_reasoning=require_reasoning,
            **decoding,
        )

    @property
    def training_knowledge(self) -> dict[str, Any]:
        """The teacher's class profiles of the tasks folder this model records, when it still exists
        (``{}`` otherwise): copy-aware decoding copies training frequencies from them."""
        if self._knowledge is None:
            from cellduality.faithfulness import find_tasks_dir, knowledge_or_none

            source = find_tasks_dir(self.path)
            self._knowledge = knowledge_or_none(source, self.tasks) if source else {}
        return self._knowledge

    @property
    def inverse(self) -> Any:
        """The sentence -> expression model of the training data (loaded on first use)."""
        if self._inverse is None:
            from cellduality.sentences import InverseModel

            path = self.path / "inverse.json"
            if not path.is_file():
                raise ModelError(f"{self.path} has no inverse.json; it cannot turn sentences into expression.")
            self._inverse = InverseModel.load(path)
        return self._inverse


def model_tasks(folder: str | Path) -> dict[str, Task]:
    """The tasks a model folder records in ``cellduality.json``, without loading its weights
    (so a command can check a task name and its inputs before the slow part)."""
    from cellduality.models import read_model_info
    from cellduality.tasks import load_tasks

    folder = Path(folder)
    read_model_info(folder)
    tasks = load_tasks(folder / "cellduality.json")
    if not tasks:
        raise ModelError(f"{folder} records no tasks in cellduality.json; re-train it with `cellduality sft`.")
    return tasks


def find_task(tasks: dict[str, Task], name: str) -> Task:
    """``tasks[name]``, or a one-line error listing the tasks the model knows."""
    try:
        return tasks[name]
    except KeyError:
        raise CellDualityError(
            f"This model was not trained on the '{name}' task; it knows: {', '.join(sorted(tasks))}."
        ) from None
