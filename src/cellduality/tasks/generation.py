"""Conditional cell generation: cell type -> cell sentence; dual: cell sentence -> cell type.

The reward is categorical, ``1[t̂ = t]``: a plausible generated cell should let the dual name the
type that was asked for. ``x_u`` is the requested type, part of the prompt's own input, so RL rows
never carry a real cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cellduality.errors import CellDualityError
from cellduality.rewards import rwjs
from cellduality.tasks.base import Answer, Example, Known, Task, TaskContext, Unknown, register_task
from cellduality.tasks.text import (
    cell_id as cell_of,
)
from cellduality.tasks.text import (
    choose,
    format_choices,
    genes_of,
    normalise_label,
    parse_genes,
    parse_label,
    render_genes,
    require_column,
    stable_seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.sentences import CellSentenceDataset

_FORMAT = "Think step by step inside <think></think>, then give only {what} inside <answer></answer>."


@register_task
class GenerationTask(Task):
    """Write the ranked top genes of a cell of a requested type; the dual names the type back."""

    name: ClassVar[str] = "generation"
    kind: ClassVar = "generative"
    offline_traces: ClassVar[str | None] = "generation"
    description: ClassVar[str] = "cell type -> cell sentence (dual: cell sentence -> cell type)"
    prediction_key: ClassVar[str | None] = "generated"
    primal_templates: ClassVar[tuple[str, ...]] = (
        "Generate a single {cell_type} cell as a cell sentence: its {n} most expressed genes, "
        "highest first.\n" + _FORMAT.format(what="the gene symbols, separated by spaces,"),
        "Write the top {n} expressed genes, in decreasing order of expression, of a typical "
        "{cell_type} cell. " + _FORMAT.format(what="the cell sentence"),
        "Cell type: {cell_type}. Produce a realistic cell sentence ({n} gene symbols ranked by "
        "expression). " + _FORMAT.format(what="the genes"),
    )
    dual_templates: ClassVar[tuple[str, ...]] = (
        "Below are the most expressed genes of a single cell, in decreasing order of expression:\n{cell}\n"
        "Which cell type is it? Choose one of: {labels}.\n" + _FORMAT.format(what="the cell type"),
        "Cell sentence (genes ranked by expression, highest first): {cell}\n"
        "Candidate cell types: {labels}.\nWhich type produced this cell? " + _FORMAT.format(what="the cell type"),
    )

    @property
    def max_genes(self) -> int:
        return int(self.options["max_genes"])

    @classmethod
    def context_from(cls, cells: CellSentenceDataset, indices: Sequence[int], **options: Any) -> TaskContext:
        key = options.get("label_key") or cells.meta.get("default_label_key")
        options["label_key"] = require_column(cells.obs, key, cls.name, "--label-key")
        labels = tuple(sorted({str(cells.obs[options["label_key"]].iloc[i]) for i in indices} - {"", "nan"}))
        if len(labels) < 2:
            raise CellDualityError(f"Task '{cls.name}' needs at least two cell types, found {list(labels)}.")
        return TaskContext(
            dataset=str(cells.meta.get("source", "")),
            labels=labels,
            genes=frozenset(cells.vocabulary),
            options={k: v for k, v in options.items() if v is not None},
        )

    def make_examples(self, cells: CellSentenceDataset, indices: Sequence[int], seed: int) -> list[Example]:
        column = self.options["label_key"]
        examples = []
        for i in indices:
            label = str(cells.obs[column].iloc[i])
            genes = genes_of(cells.sentences[i], self.max_genes)
            if label not in self.context.labels or not genes:
                continue
            cell_id = cell_of(cells, i)
            examples.append(
                Example(
                    id=f"{self.name}:{cell_id}",
                    task=self.name,
                    input={"cell_type": label},
                    target=genes,
                    seed=stable_seed(seed, self.name, cell_id),
                    meta={"cell_id": cell_id, "row": int(i)},
                )
            )
        return examples

    def inference_inputs(self) -> tuple[str, ...]:
        return ("cell_type",)

    def inference_input(self, values: dict[str, str]) -> dict[str, Any]:
        cell_type = str(values["cell_type"])
        if cell_type not in self.context.labels:
            raise CellDualityError(f"Unknown cell type '{cell_type}'; this model knows: {', '.join(self.context.labels)}.")
        return {"cell_type": cell_type}

    def split(self, example: Example) -> tuple[Known, Unknown]:
        return {}, {"cell_type": example.input["cell_type"]}

    def primal_prompt(self, example: Example) -> str:
        template = choose(self.primal_templates, example.seed, "primal")
        return template.format(cell_type=example.input["cell_type"], n=self.max_genes)

    def render_answer(self, answer: Answer) -> str:
        return render_genes(answer)

    def parse_primal(self, text: str) -> Answer | None:
        return parse_genes(text, self.context.genes)

    def dual_prompt(self, answer: Answer, known: Known, seed: int) -> str:
        template = choose(self.dual_templates, seed, "dual")
        cell = render_genes(genes_of(answer, self.max_genes))
        return template.format(cell=cell, labels=format_choices(self.context.labels))

    def render_unknown(self, unknown: Unknown) -> str:
        return str(unknown["cell_type"])

    def unknown_candidates(self, unknown: Unknown) -> list[Unknown]:
        return [{"cell_type": label} for label in self.context.labels]

    def parse_dual(self, text: str) -> Unknown | None:
        label = parse_label(text, self.context.labels)
        return None if label is None else {"cell_type": label}

    def distance(self, truth: Unknown, guess: Unknown | None) -> float:
        if not guess or not isinstance(guess, dict):
            return 1.0
        same = normalise_label(str(truth.get("cell_type", ""))) == normalise_label(str(guess.get("cell_type", "")))
        return 0.0 if same else 1.0

    def ground_truth_score(self, target: Answer, answer: Answer | None) -> float:
        return rwjs(target, answer) if answer else 0.0

    def claim_cells(self, prompt: Any, response: str) -> tuple[list[str] | None, list[str] | None]:
        """The reasoning cites ranks of the cell it writes: the answer's own cell."""
        genes = self.parse_primal(response)
        return (list(genes) if genes else None), None
