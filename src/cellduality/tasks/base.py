"""Complementary task duality (paper Definition 3.1) as one protocol.

A primal task maps an input ``x`` to an output ``y``. Its input splits into a *known* part
``x_k`` and an *unknown* part ``x_u``; the complementary dual task rebuilds ``x_u`` from
``(y, x_k)``. The distance ``d(x_u, x̂_u)`` turns that rebuild into a reward that needs no label.

Every task (annotation, generation, sensitivity, perturbation) is one subclass of :class:`Task`.
Everything downstream -- data builders, the teacher, rewards, training and evaluation -- talks to
this class only, so a new task is one new module that subclasses it and calls
:func:`register_task`.

Data that crosses module boundaries is JSON-able (plain dicts, lists, strings), because it is
stored in Hugging Face ``datasets`` columns as JSON strings; that keeps the Arrow schema identical
for every task so multi-task mixtures concatenate cleanly.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cellduality.errors import CellDualityError
from cellduality.tasks.options import TaskOptions, validate_options

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.faithfulness import FaithfulnessReport
    from cellduality.sentences import CellSentenceDataset

Known = dict[str, Any]
"""``x_k``: the part of the primal input the dual task is given (JSON-able)."""
Unknown = dict[str, Any]
"""``x_u``: the part of the primal input the dual task must rebuild (JSON-able)."""
Answer = Any
"""A parsed primal answer: a label string, a gene list, ... (JSON-able)."""

TaskKind = Literal["classification", "generative"]

# --------------------------------------------------------------------------------------------
# Answer format shared by all tasks:  <think> reasoning </think> <answer> final answer </answer>
# --------------------------------------------------------------------------------------------

_ANSWER_RE = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
_THINK_RE = re.compile(r"<\s*think\s*>(.*?)<\s*/\s*think\s*>", re.IGNORECASE | re.DOTALL)


def format_response(reasoning: str, answer: str) -> str:
    """Render a response in the canonical ``<think>…</think>`` then ``<answer>…</answer>`` form."""
    return f"<think> {reasoning.strip()} </think> <answer> {answer.strip()} </answer>"


DIRECT_INSTRUCTION = "Answer directly, without reasoning."


def direct_prompt(prompt: str) -> str:
    """The prompt that asks for the answer alone (:func:`direct_response`).

    SFT teaches this form on its own prompt (``teach`` options ``direct_primal``/``direct_dual``),
    so likelihood scoring -- the duality reward, fast annotation -- can read the model's belief
    about an answer in one forward pass, while the plain prompt keeps asking for reasoning: GRPO
    rollouts, evaluation and ``--explain`` do not drift into answer-only replies.
    """
    return f"{prompt}\n{DIRECT_INSTRUCTION}"


PRIMAL_DIRECT = "primal_direct"
"""Direction of the default answer-only SFT rows of a classification task: the primal prompt plus
:data:`DIRECT_INSTRUCTION` (:func:`direct_prompt`); fast annotation ranks the labels under it."""
ANSWER_PROMPT = "primal_answer"
"""Direction of the opt-in answer-only rows under the task's own answer-only prompt
(:meth:`Task.answer_only_prompt`, teach option ``direct_primal_prompt: answer_only``)."""


def direct_response(answer: str) -> str:
    """An answer with no reasoning block at all: ``<answer> … </answer>``.

    Not an *empty* ``<think>  </think>``: measured on the quickstart model, SFT rows with an empty
    think block taught the model to close ``<think>`` at once after plain prompts too (greedy
    annotation wrote no reasoning for any of 60 test cells). Without the block, every reasoning
    row still opens with ``<think>`` followed by text, so that habit has nothing to copy.
    """
    return f"<answer> {answer.strip()} </answer>"


def extract_answer(text: Any) -> str | None:
    """Return the stripped content of the single ``<answer>`` block, or ``None``.

    Forgiving about whitespace and tag case; strict about structure: no block, an empty block or
    more than one block (hedging between answers) is malformed. Never raises.
    """
    if not isinstance(text, str):
        return None
    blocks = _ANSWER_RE.findall(text)
    if len(blocks) != 1:
        return None
    content = " ".join(blocks[0].split())
    return content or None


def extract_reasoning(text: Any) -> str:
    """Return the ``<think>`` content (empty string when absent). Never raises."""
    if not isinstance(text, str):
        return ""
    match = _THINK_RE.search(text)
    return " ".join(match.group(1).split()) if match else ""


# --------------------------------------------------------------------------------------------
# Context and examples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskContext:
    """What a task must know about its dataset that is *not* per-example ground truth.

    The label vocabulary (the candidate set a classifier chooses from), the gene vocabulary (to
    reject sentences made of non-genes) and the perturbation / drug vocabularies. It is saved
    with task datasets and model directories so rewards and inference rebuild the same task.
    """

    dataset: str = ""
    labels: tuple[str, ...] = ()
    genes: frozenset[str] = field(default_factory=frozenset)
    perturbations: tuple[str, ...] = ()
    drugs: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    gene_frequency: dict[str, int] = field(default_factory=dict, hash=False, compare=False)
    """In how many *training* cells' prompts each gene appears (label-free); filled only for tasks
    whose dual needs it (``hide: rare``), empty otherwise."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "labels": list(self.labels),
            "genes": sorted(self.genes),
            "perturbations": list(self.perturbations),
            "drugs": list(self.drugs),
            "options": dict(self.options),
            **({"gene_frequency": dict(sorted(self.gene_frequency.items()))} if self.gene_frequency else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskContext:
        return cls(
            dataset=data.get("dataset", ""),
            labels=tuple(data.get("labels", ())),
            genes=frozenset(data.get("genes", ())),
            perturbations=tuple(data.get("perturbations", ())),
            drugs=tuple(data.get("drugs", ())),
            options=dict(data.get("options", {})),
            gene_frequency={str(k): int(v) for k, v in (data.get("gene_frequency") or {}).items()},
        )


@dataclass
class Example:
    """One primal example: the full input ``x``, the reference output ``y*`` and a seed.

    ``seed`` fixes everything random about the example (prompt paraphrase, which genes the dual
    must inpaint), so the same example always yields the same prompts and split.
    """

    id: str
    task: str
    input: dict[str, Any]
    target: Answer
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LikelihoodQuery:
    """Pairs to score teacher-forced for one primal answer (:meth:`Task.likelihood_queries`).

    ``prompts[i]`` + ``targets[i]`` are scored; the reward is the softmax over the pairs'
    log-likelihoods taken at ``index`` (or the per-token probability when there is one pair).
    ``keys[i]`` names candidate ``i`` (a rendered label) so that a calibrated reward can learn,
    across cells, how much the dual favours each candidate whatever the cell.
    """

    prompts: list[str]
    targets: list[str]
    index: int
    keys: list[str] | None = None


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


class Task(ABC):
    """A primal task together with its complementary dual (Definition 3.1).

    Subclasses set ``name``, ``kind`` and implement the abstract methods. Parsers and
    :meth:`distance` must never raise on model output: malformed text parses to ``None``.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    description: ClassVar[str] = ""

    # ---- what the rest of the system reads from a task (the plug-in contract) ----------------
    options_model: ClassVar[type[TaskOptions]] = TaskOptions
    """The task's options: names, types and the one default of each (:mod:`.options`)."""
    offline_traces: ClassVar[str | None] = None
    cites_input_genes_only: ClassVar[bool] = False
    """True when the primal reasoning cites only genes of the input cell (the teacher's traces never
    name another): copy-aware decoding may then keep the reasoning to those genes."""
    """Which trace writer of the offline teacher serves this task: a key of
    :data:`cellduality.teacher.offline.TRACE_WRITERS` (a plug-in may register its own there).
    ``None``: only an API teacher can write its traces. A name, not a teacher object, because
    tasks sit below the teacher in the layering (the teacher imports tasks, never the reverse)."""
    headline_metrics: ClassVar[tuple[str, ...]] = ()
    """The metrics the pipeline's summary table shows for this task, in order (empty: by kind)."""
    scored_per_condition: ClassVar[bool] = False
    """Generative tasks only: score generated cells against the real cells of each condition
    (perturbation) rather than as one population with k-NN accuracy of the condition (generation)."""

    cell_input: ClassVar[str | None] = None
    """Inference: the key of ``Example.input`` that holds a user's cell (its ranked genes); ``None``
    when the primal input is not a cell (generation), so no cell of the user is read."""
    prediction_key: ClassVar[str | None] = None
    """Inference: results go to ``.obs[f"{key_added}_{prediction_key}"]`` (generative tasks:
    ``_{prediction_key}_sentence`` and ``.obsm[f"{key_added}_{prediction_key}"]``); default: the name."""

    def __init__(self, context: TaskContext | None = None, **options: Any) -> None:
        self.context = context or TaskContext()
        values = validate_options(self.name, self.options_model, {**self.context.options, **options})
        self.options: dict[str, Any] = values.model_dump()

    def posed_on(self, cells: Sequence[Sequence[str]]) -> Task:
        """This task as posed on another dataset's ranked cells (adaptation, label-free).

        A task whose ``x_k``/``x_u`` split rests on statistics of the cells (``hide: rare``) recounts
        them on ``cells``: what is rare in stimulated cells is not what was rare in the controls the
        model was trained on. Default: the task unchanged.
        """
        return self

    def input_cell(self, known: Known, unknown: Unknown) -> list[str] | None:
        """The whole cell the primal was shown, rebuilt from ``(x_k, x_u)``; ``None`` when the
        primal input is not a cell (generation). Baselines and the offline teacher read it."""
        return None

    def baselines(self, train: Any, test: Any, *, inverse: Any = None, scorer: Any = None,
                  seed: int = 0) -> dict[str, dict[str, float]]:
        """``{baseline: metrics}`` of the classical baselines for this task on ``test``.

        ``train``/``test`` are :class:`~cellduality.evaluation.scoring.TaskRows`; ``scorer`` is the
        fitted :class:`~cellduality.evaluation.scoring.GenerativeScorer` of generative tasks.
        Default by kind: logistic regression and 10-NN on :meth:`input_cell` (classification), a
        random real training cell of the requested / of any condition (generative).
        """
        from cellduality.evaluation import baselines as B

        if self.kind == "classification":
            return B.classification_baselines(train, test, inverse, seed, task=self)
        return B.generation_baselines(scorer, seed)

    def inference_inputs(self) -> tuple[str, ...]:
        """Inference: what a user gives besides the cells (keyword arguments of ``cd.tl.predict``)."""
        return ()

    def inference_input(self, values: dict[str, str]) -> dict[str, Any]:
        """Inference: the ``Example.input`` fields besides the cell, from one value of each of
        :meth:`inference_inputs`. A value the model cannot take raises :class:`CellDualityError`
        naming the ones it knows. Default: each value as given."""
        return {name: values[name] for name in self.inference_inputs()}

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        """:attr:`headline_metrics`, or the kind's default ones."""
        if cls.headline_metrics:
            return cls.headline_metrics
        if cls.kind == "classification":
            return ("accuracy", "macro_f1", "malformed_rate", "faithful_claims", "faithful_responses",
                    "reward_auc", "reward_auc_contrast")
        return ("knn@10", "gw", "valid_rate", "faithful_claims", "reward_auc_contrast")

    # ---- data -------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def context_from(cls, cells: CellSentenceDataset, indices: Sequence[int], **options: Any) -> TaskContext:
        """Derive the task context (label set, vocabularies) from the training cells.

        Raise :class:`CellDualityError` naming the missing column when the data cannot serve
        this task (e.g. ``perturbation`` on data without a perturbation column).
        """

    @abstractmethod
    def make_examples(self, cells: CellSentenceDataset, indices: Sequence[int], seed: int) -> list[Example]:
        """Turn the cells at ``indices`` into primal examples (deterministic given ``seed``)."""

    # ---- duality ----------------------------------------------------------------------------
    @abstractmethod
    def split(self, example: Example) -> tuple[Known, Unknown]:
        """Split the primal input into ``(x_k, x_u)``; deterministic given ``example.seed``."""

    @abstractmethod
    def primal_prompt(self, example: Example) -> str:
        """The primal prompt for ``example`` (paraphrase chosen by ``example.seed``)."""

    def answer_only_prompt(self, known: Known, unknown: Unknown) -> str | None:
        """The prompt that asks for the primal answer alone, for the input ``(x_k, x_u)``; ``None``
        when the task has no wording of its own for it.

        Its own wording, with everything that does not depend on the cell (instruction, the
        candidate answers) *first*: likelihood ranking (:mod:`cellduality.inference.fast`) then runs
        that head once per call and each cell adds only its own tokens -- 36 after a 79-token head,
        against a 124-token prompt per cell on the quickstart model, about twice the cells per second. Taught only when asked (teach
        option ``direct_primal_prompt: answer_only``): on the quickstart model (3 seeds) the extra
        prompt form cost ~10 points of annotation accuracy and ~18 of generation kNN@10. The
        default, and a task without one, is the primal prompt plus :data:`DIRECT_INSTRUCTION`
        (:data:`PRIMAL_DIRECT`).
        """
        return None

    @abstractmethod
    def render_answer(self, answer: Answer) -> str:
        """Canonical text of a primal answer (what goes inside ``<answer>``)."""

    @abstractmethod
    def parse_primal(self, text: str) -> Answer | None:
        """Parse a primal response; ``None`` when malformed. Never raises."""

    @abstractmethod
    def dual_prompt(self, answer: Answer, known: Known, seed: int) -> str:
        """The dual prompt built from a primal answer ``y`` and ``x_k`` -- never from ``x_u``."""

    @abstractmethod
    def render_unknown(self, unknown: Unknown) -> str:
        """Canonical text of ``x_u`` (what goes inside ``<answer>`` of a dual response)."""

    @abstractmethod
    def parse_dual(self, text: str) -> Unknown | None:
        """Parse a dual response into ``x̂_u``; ``None`` when malformed. Never raises."""

    @abstractmethod
    def distance(self, truth: Unknown, guess: Unknown | None) -> float:
        """``d(x_u, x̂_u)`` in ``[0, 1]``; the duality reward is ``1 - distance``. ``None`` -> 1."""

    @abstractmethod
    def ground_truth_score(self, target: Answer, answer: Answer | None) -> float:
        """Oracle reward in ``[0, 1]``: label accuracy (classification) or RWJS to the real cell."""

    # ---- helpers shared by every task ------------------------------------------------------
    def duality_score(self, unknown: Unknown, dual_text: str) -> float:
        """Reward of one dual response: ``1 - d(x_u, parse_dual(text))``.

        Only the parser is forgiving (malformed text -> ``None`` -> distance 1 -> reward 0). An
        exception or a value outside [0, 1] from :meth:`distance` is a bug in the task and
        propagates: silently turning it into 0 would train GRPO on nothing without a word.
        """
        return self.score_guess(unknown, self.parse_dual(dual_text))

    def score_guess(self, unknown: Unknown, guess: Unknown | None) -> float:
        """:meth:`duality_score` of an already parsed dual answer ``x̂_u`` (``None``: malformed)."""
        value = 1.0 - float(self.distance(unknown, guess))
        if not 0.0 <= value <= 1.0:  # also catches NaN
            raise ValueError(f"{type(self).__name__}.distance returned {1.0 - value!r}, outside [0, 1]")
        return value

    # ---- likelihood duality (one forward pass, no sampling) --------------------------------
    def answer_candidates(self) -> list[Answer]:
        """Every primal answer the task allows, for contrasting the dual over answers.

        Classification tasks return their label set (part of the task, not ground truth);
        generative tasks, whose answers are open-ended, return ``[]``.
        """
        return list(self.context.labels) if self.kind == "classification" else []

    def unknown_candidates(self, unknown: Unknown) -> list[Unknown]:
        """Every value ``x_u`` can take, for contrasting the dual over unknowns (``[]``: open-ended)."""
        return []

    def dual_target(self, unknown: Unknown) -> str:
        """The dual response that states ``x_u`` directly (:func:`direct_response`), for teacher
        forcing after :func:`direct_prompt` of the dual prompt."""
        return direct_response(self.render_unknown(unknown))

    def likelihood_queries(self, answer: Answer, known: Known, unknown: Unknown, seed: int) -> LikelihoodQuery:
        """What to score so that the dual's *probability* of ``x_u`` becomes the reward.

        Classification (dual = inpainting ``x_u`` given ``(y, x_k)``): score ``x_u`` after the dual
        prompt of every candidate answer; the reward is the posterior of ``y`` among them
        (Bayes with a flat prior: which label best explains the hidden genes). Generative (dual =
        name ``x_u`` from ``(y, x_k)``): score every candidate ``x_u`` after the one dual prompt of
        ``y``; the reward is the probability of the true ``x_u``. Without candidates the query
        scores the true ``x_u`` alone (reward: its per-token probability).
        """
        answers = self.answer_candidates()
        if answers:
            keys = [self.render_answer(a) for a in answers]
            mine = self.render_answer(answer)
            if mine not in keys:
                raise ValueError(f"{self.name}: answer {mine!r} is not among the candidates {keys}")
            target = self.dual_target(unknown)
            return LikelihoodQuery([direct_prompt(self.dual_prompt(a, known, seed)) for a in answers],
                                   [target] * len(answers), keys.index(mine), keys)
        prompt = direct_prompt(self.dual_prompt(answer, known, seed))
        options = self.unknown_candidates(unknown)
        if options:
            truth = [i for i, u in enumerate(options) if self.distance(unknown, u) == 0.0]
            if len(truth) != 1:
                raise ValueError(f"{self.name}: x_u {unknown!r} matches {len(truth)} of the candidates")
            targets = [self.dual_target(u) for u in options]
            return LikelihoodQuery([prompt] * len(options), targets, truth[0], targets)
        return LikelihoodQuery([prompt], [self.dual_target(unknown)], 0)

    # ---- faithfulness of the reasoning (cellduality.faithfulness) -----------------------------
    def claim_cells(self, prompt: Any, response: str) -> tuple[list[str] | None, list[str] | None]:
        """The cells a primal response's rank claims are about: ``(cell, after)``.

        Read from the prompt and the response only -- never from a label -- so checking the
        reasoning is a label-free reward. ``after`` is the cell the right side of ``rank N → M``
        refers to. Default: no cell (cell claims stay unchecked); tasks override it.
        """
        return None, None

    def check_reasoning(self, prompt: Any, response: str, knowledge: Any = None) -> FaithfulnessReport:
        """Per-claim verdicts on a primal response's ``<think>`` text and its faithfulness score.

        ``knowledge`` is the :class:`~cellduality.teacher.knowledge.ClassProfiles` the offline
        teacher fitted for this task; without it claims about the training data are unchecked.
        """
        from cellduality.faithfulness import ClaimContext, check_text

        classification = self.kind == "classification"
        answer = self.parse_primal(response) if classification else None
        cell, after = self.claim_cells(prompt, response)
        context = ClaimContext(cell=cell, after=after, genes=self.context.genes,
                               labels=self.context.labels if classification else (),
                               answer=None if answer is None else self.render_answer(answer), knowledge=knowledge)
        return check_text(extract_reasoning(response), context)

    def reference_response(self, example: Example, reasoning: str = "") -> str:
        """A well-formed primal response carrying the reference answer (used by SFT data)."""
        return format_response(reasoning, self.render_answer(example.target))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dataset={self.context.dataset!r}, labels={len(self.context.labels)})"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to :func:`get_task` under ``cls.name``."""
    TASKS[cls.name] = cls
    return cls


def get_task(name: str, context: TaskContext | None = None, **options: Any) -> Task:
    """Instantiate the task called ``name`` (one of :data:`TASKS`)."""
    import cellduality.tasks  # noqa: F401  (registers the built-in tasks)

    try:
        cls = TASKS[name]
    except KeyError:
        raise CellDualityError(f"Unknown task '{name}'; choose one of: {', '.join(sorted(TASKS))}.") from None
    return cls(context, **options)


def gene_vocabulary(tasks: Any) -> frozenset[str]:
    """The union of the gene vocabularies of ``tasks`` (a mapping or iterable of :class:`Task`).

    Decoding uses it to keep a gene from repeating inside an answer
    (:class:`cellduality.models.generation.UniqueAnswerGenes`).
    """
    values = tasks.values() if hasattr(tasks, "values") else tasks
    return frozenset().union(*(t.context.genes for t in values))


def dumps(value: Any) -> str:
    """JSON for dataset columns (compact, stable key order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str) -> Any:
    return json.loads(text)
