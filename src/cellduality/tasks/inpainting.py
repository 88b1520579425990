"""Classification tasks whose dual is conditional gene inpainting (paper §3.4.1).

A classifier's output is one low-information label, so the dual cannot rebuild the cell from it
alone. Instead the cell is split: the primal sees the whole cell and names a label; the dual sees
only the *observed* genes ``c_obs`` (hidden ones masked) plus that label and must name the hidden
genes ``c_hid``; the reward is ``RWJS(c_hid, ĉ_hid)``. A good label helps inpainting only if the
hidden genes carry the label's signal, so by default we hide every other gene of ranks 1..2m
(``../shared/data/BASELINES.md`` beside the repo: hiding the top carries the signal, hiding the tail does not).

Why the choice matters: with a perfect dual, ``log P(c_hid | label, c_obs) = log P(label | cell) -
log P(label | c_obs) + const`` (Bayes), so the reward can separate labels only as far as the hidden
genes tell the label *beyond* the observed ones. Hiding genes the observed ones predict (every other
top gene) makes a well-trained dual flat; ``hide: rare`` hides each cell's genes that are least
frequent in the training cells -- the specific ones -- so the observed genes are the ubiquitous
ones and the label is needed to fill the gaps (docs/results.md, "What the dual can tell").

Annotation and drug sensitivity are both subclasses; a new label-prediction task is one module
that sets the templates and how labels and extra inputs (e.g. the drug) are read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, get_args

from cellduality.errors import CellDualityError
from cellduality.rewards import rwjs
from cellduality.tasks.base import Answer, Example, Known, Task, TaskContext, Unknown
from cellduality.tasks.options import InpaintingOptions, TaskOptions
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
    rng_for,
    stable_seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.sentences import CellSentenceDataset

MASK = "___"
HIDE_STRATEGIES: tuple[str, ...] = get_args(InpaintingOptions.model_fields["hide"].annotation)
"""The ``hide`` values, read from the option's type so they are declared once (:mod:`.options`)."""


def full_cell(known: Mapping[str, Any], unknown: Mapping[str, Any]) -> list[str]:
    """The whole cell of an inpainting row: the masked sentence with the hidden genes put back."""
    hidden = iter(unknown.get("hidden") or [])
    return [gene if gene is not None else next(hidden, "") for gene in known.get("masked") or []]


def prompt_frequency(cells: Iterable[str | Sequence[str]], max_genes: int) -> dict[str, int]:
    """In how many of ``cells`` (sentences or gene lists) each gene is among the first ``max_genes``."""
    counts: Counter[str] = Counter()
    for genes in cells:
        counts.update(set(genes_of(genes, max_genes)))
    return dict(counts)


class InpaintingTask(Task):
    """Cell (+ extra inputs) -> label; dual: (c_obs, extras, label) -> c_hid.

    Options: :class:`~cellduality.tasks.options.InpaintingOptions` (``max_genes``, ``n_hidden``,
    ``hide``: ``interleaved`` = every other gene of ranks 1..2m with a seeded phase, ``random`` =
    m random genes, ``tail`` = the last m, ``rare`` = the m genes of the cell seen in the fewest
    training cells' prompts (:attr:`TaskContext.gene_frequency`; ties: the lower-ranked first);
    ``label_key``; ``labels``).
    """

    kind: ClassVar = "classification"
    options_model: ClassVar[type[TaskOptions]] = InpaintingOptions
    offline_traces: ClassVar[str | None] = "labels"
    cites_input_genes_only: ClassVar[bool] = True
    primal_templates: ClassVar[tuple[str, ...]]
    dual_templates: ClassVar[tuple[str, ...]]
    answer_only_template: ClassVar[str | None] = None
    """The answer-only prompt (:meth:`Task.answer_only_prompt`): one wording, the candidate
    ``{labels}`` and the instruction before the per-cell fields (``{cell}``, extra keys), and
    :data:`~cellduality.tasks.base.DIRECT_INSTRUCTION` last. That last line matters: without it the
    quickstart model answered 75 % of *plain* annotation prompts without reasoning (the form's
    only cue sat at the start of the prompt, far from where the answer begins)."""
    default_label_key: ClassVar[str | None] = None
    extra_keys: ClassVar[tuple[str, ...]] = ()
    """Per-example inputs besides the cell (e.g. ``drug``); they are part of ``x_k``."""
    cell_input: ClassVar[str | None] = "cell"

    def inference_inputs(self) -> tuple[str, ...]:
        return self.extra_keys

    # ---- options -----------------------------------------------------------------------------
    @property
    def max_genes(self) -> int:
        return int(self.options["max_genes"])

    @property
    def n_hidden(self) -> int:
        return int(self.options["n_hidden"])

    # ---- data --------------------------------------------------------------------------------
    @classmethod
    def label_column(cls, cells: CellSentenceDataset, options: dict[str, Any]) -> str:
        key = options.get("label_key") or cells.meta.get("default_label_key") or cls.default_label_key
        return require_column(cells.obs, key, cls.name, "--label-key")

    @classmethod
    def extras_context(cls, cells: CellSentenceDataset, indices: Sequence[int], options: dict[str, Any]) -> dict:
        """Extra context fields (e.g. the drug vocabulary); none by default."""
        return {}

    @classmethod
    def context_from(cls, cells: CellSentenceDataset, indices: Sequence[int], **options: Any) -> TaskContext:
        if "labels" in options:  # a candidate set given by the user: works on unlabelled data
            labels = tuple(options.pop("labels"))
        else:
            column = cls.label_column(cells, options)
            options["label_key"] = column
            labels = tuple(sorted({str(cells.obs[column].iloc[i]) for i in indices} - {"", "nan", "None"}))
        if len(labels) < 2:
            raise CellDualityError(f"Task '{cls.name}' needs at least two labels, found {list(labels)}.")
        extras = cls.extras_context(cells, indices, options)
        options = {k: v for k, v in options.items() if v is not None}
        if options.get("hide") == "rare":
            extras["gene_frequency"] = cls.prompt_gene_frequency(cells, indices, options)
        return TaskContext(
            dataset=str(cells.meta.get("source", "")),
            labels=labels,
            genes=frozenset(cells.vocabulary),
            options=options,
            **extras,
        )

    @classmethod
    def prompt_gene_frequency(cls, cells: CellSentenceDataset, indices: Sequence[int],
                              options: dict[str, Any]) -> dict[str, int]:
        """In how many of the given (training) cells' prompts each gene appears; no label is read."""
        max_genes = int(options.get("max_genes") or cls.options_model.model_fields["max_genes"].default)
        sentences = cells.sentences
        return prompt_frequency((sentences[i] for i in indices), max_genes)

    def posed_on(self, cells: Sequence[Sequence[str]]) -> InpaintingTask:
        """With ``hide: rare``, the gene frequencies recounted on ``cells`` (their first ``max_genes``)."""
        if self.options["hide"] != "rare":
            return self
        return type(self)(replace(self.context, gene_frequency=prompt_frequency(cells, self.max_genes)),
                          **self.options)

    def example_extras(self, cells: CellSentenceDataset, index: int) -> dict[str, str]:
        return {}

    def make_examples(self, cells: CellSentenceDataset, indices: Sequence[int], seed: int) -> list[Example]:
        column = self.options.get("label_key")
        sentences = cells.sentences
        examples = []
        for i in indices:
            genes = genes_of(sentences[i], self.max_genes)
            if len(genes) < 2:
                continue
            cell_id = cell_of(cells, i)
            target = str(cells.obs[column].iloc[i]) if column and column in cells.obs else None
            examples.append(
                Example(
                    id=f"{self.name}:{cell_id}",
                    task=self.name,
                    input={"cell": genes, **self.example_extras(cells, i)},
                    target=target,
                    seed=stable_seed(seed, self.name, cell_id),
                    meta={"cell_id": cell_id, "row": int(i)},
                )
            )
        return examples

    # ---- duality -----------------------------------------------------------------------------
    def hidden_positions(self, cell: Sequence[str], seed: int) -> list[int]:
        """0-based positions of the genes the dual must inpaint (seeded per example), in rank order."""
        n_genes = len(cell)
        m = max(1, min(self.n_hidden, n_genes // 2))
        rng = rng_for(seed, "split")
        hide = self.options["hide"]
        if hide == "rare":
            frequency = self.context.gene_frequency
            if not frequency:
                raise CellDualityError(f"Task '{self.name}' hides rare genes but its context has no gene "
                                       "frequencies; rebuild the tasks with `cellduality tasks build`.")
            rarest = sorted(range(n_genes), key=lambda i: (frequency.get(cell[i], 0), -i))[:m]
            return sorted(rarest)
        if hide == "interleaved":
            phase = rng.randrange(2)
            return list(range(phase, n_genes, 2))[:m]
        if hide == "random":
            return sorted(rng.sample(range(n_genes), m))
        if hide == "tail":
            return list(range(n_genes - m, n_genes))
        raise CellDualityError(f"Unknown hide strategy '{hide}'; choose one of: {', '.join(HIDE_STRATEGIES)}.")

    def input_cell(self, known: Known, unknown: Unknown) -> list[str] | None:
        return full_cell(known, unknown)

    def split(self, example: Example) -> tuple[Known, Unknown]:
        cell = list(example.input["cell"])
        hidden = set(self.hidden_positions(cell, example.seed))
        known: Known = {
            "masked": [None if i in hidden else g for i, g in enumerate(cell)],
            **{k: example.input[k] for k in self.extra_keys},
        }
        return known, {"hidden": [cell[i] for i in sorted(hidden)]}

    def _fields(self, known: Known | dict) -> dict[str, str]:
        return {k: str(known.get(k, "")) for k in self.extra_keys}

    def primal_prompt(self, example: Example) -> str:
        template = choose(self.primal_templates, example.seed, "primal")
        return template.format(
            cell=render_genes(example.input["cell"]),
            labels=format_choices(self.context.labels),
            **self._fields(example.input),
        )

    def answer_only_prompt(self, known: Known, unknown: Unknown) -> str | None:
        if not self.answer_only_template:
            return None
        return self.answer_only_template.format(cell=render_genes(full_cell(known, unknown)),
                                                labels=format_choices(self.context.labels), **self._fields(known))

    def render_answer(self, answer: Answer) -> str:
        return str(answer)

    def parse_primal(self, text: str) -> Answer | None:
        return parse_label(text, self.context.labels)

    def dual_prompt(self, answer: Answer, known: Known, seed: int) -> str:
        masked = known.get("masked") or []
        n_hidden = sum(1 for g in masked if g is None)
        template = choose(self.dual_templates, seed, "dual")
        return template.format(
            label=str(answer),
            masked=" ".join(MASK if g is None else str(g) for g in masked),
            n_hidden=n_hidden,
            **self._fields(known),
        )

    def render_unknown(self, unknown: Unknown) -> str:
        return render_genes(unknown["hidden"])

    def parse_dual(self, text: str) -> Unknown | None:
        genes = parse_genes(text, self.context.genes)
        return None if genes is None else {"hidden": genes}

    def distance(self, truth: Unknown, guess: Unknown | None) -> float:
        if not guess or not isinstance(guess, dict):
            return 1.0
        return 1.0 - rwjs(truth.get("hidden"), guess.get("hidden"))

    def ground_truth_score(self, target: Answer, answer: Answer | None) -> float:
        if answer is None or target is None:
            return 0.0
        return float(normalise_label(str(answer)) == normalise_label(str(target)))

    def claim_cells(self, prompt: Any, response: str) -> tuple[list[str] | None, list[str] | None]:
        """The reasoning cites ranks of the input cell, read back from the primal prompt."""
        from cellduality.faithfulness import prompt_field

        cell = prompt_field(prompt, self.primal_templates, "cell")
        return (cell.split() if cell else None), None
