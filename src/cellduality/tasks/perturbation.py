"""Perturbation response: (control cell, perturbation) -> perturbed cell sentence;
dual: (generated cell, control cell) -> the perturbation.

A perturbation is structured (:class:`Perturbation`: kind, target, optional dose) and has one
canonical text, so the dual's answer is compared exactly: ``1[p̂ = p]``. Data sets name their
perturbations differently; :func:`perturbation_from_value` maps an ``.obs`` value to the canonical
form (Kang 2018's ``stimulated`` is IFN-beta stimulation; Papalexi 2021's gene names are CRISPR
knockouts of that gene; ``non-targeting`` / ``control`` are controls).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from cellduality.errors import CellDualityError
from cellduality.rewards import rwjs
from cellduality.tasks.base import (
    Answer,
    Example,
    Known,
    Task,
    TaskContext,
    Unknown,
    extract_answer,
    register_task,
)
from cellduality.tasks.options import TaskOptions
from cellduality.tasks.text import (
    cell_id as cell_of,
)
from cellduality.tasks.text import (
    choose,
    format_choices,
    genes_of,
    parse_genes,
    render_genes,
    require_column,
    rng_for,
    stable_seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.sentences import CellSentenceDataset

GENE_KINDS = ("knockout", "knockdown", "overexpression")
KINDS = (*GENE_KINDS, "drug", "cytokine-stimulation", "control")

_CONTROL_WORDS = {"control", "ctrl", "no perturbation", "unperturbed", "non-targeting", "nontargeting",
                  "non targeting", "nt", "none", "untreated", "vehicle", "dmso", "control (no perturbation)"}
_SKIP_VALUES = {"", "nan", "none", "unassigned", "multiple", "unknown"}

# Synonyms of each kind, as regex alternations (matched case-insensitively).
_KIND_WORDS = {
    "knockout": r"(?:crispr[- ]?)?(?:knock[- ]?out|ko)",
    "knockdown": r"(?:crispri[- ]?)?(?:knock[- ]?down|kd)|crispri",
    "overexpression": r"(?:crispra[- ]?)?(?:over[- ]?expression|overexpressed|oe)|crispra",
    "drug": r"(?:drug\s+)?(?:treatment|treated)",
    "cytokine-stimulation": r"(?:cytokine\s+)?(?:stimulation|stimulated)",
}
_DOSE = r"(?:\s+(?:at|@|dose)\s+(?P<dose>[0-9.]+\s*[a-zµμ/]*))?"
_PATTERNS = [
    (kind, re.compile(rf"^(?:{words})\s+(?:of|with|by)?\s*(?P<target>[^\s,;]+(?:\s[^\s,;@]+)*?){_DOSE}$", re.I))
    for kind, words in _KIND_WORDS.items()
] + [
    (kind, re.compile(rf"^(?P<target>[^\s,;]+)\s+(?:{words}){_DOSE}$", re.I))
    for kind, words in _KIND_WORDS.items()
]

# Condition names that are not self-describing, keyed by the lower-cased .obs value.
KNOWN_CONDITIONS = {
    "stimulated": ("cytokine-stimulation", "IFN-beta"),  # Kang et al. 2018 (IFN-beta, 6 h)
    "stim": ("cytokine-stimulation", "IFN-beta"),
}
# `perturbation_type` values of common screens -> our kinds.
TYPE_KINDS = {"crisprko": "knockout", "crispr": "knockout", "ko": "knockout", "crispri": "knockdown",
              "crispra": "overexpression", "drug": "drug", "compound": "drug", "cytokine": "cytokine-stimulation"}


@dataclass(frozen=True)
class Perturbation:
    """``{kind, target, dose}`` with one canonical text (``render``) and a forgiving ``parse``."""

    kind: str
    target: str = ""
    dose: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown perturbation kind {self.kind!r}; one of {KINDS}")

    @property
    def key(self) -> tuple[str, str, str]:
        """What equality means: kind, target (case-insensitive) and dose (spacing-insensitive)."""
        return self.kind, self.target.casefold(), "".join(self.dose.split()).casefold()

    def render(self) -> str:
        if self.kind == "control":
            return "control (no perturbation)"
        dose = f" at {self.dose}" if self.dose else ""
        if self.kind in GENE_KINDS:
            return f"{self.kind} of {self.target}{dose}"
        verb = "treatment" if self.kind == "drug" else "cytokine stimulation"
        return f"{verb} with {self.target}{dose}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Perturbation:
        return cls(str(data["kind"]), str(data.get("target", "")), str(data.get("dose", "")))

    @classmethod
    def parse(cls, text: Any) -> Perturbation | None:
        """Parse free text such as ``knockout of STAT1``, ``STAT1 KO``, ``stimulation with IFN-beta``."""
        if not isinstance(text, str):
            return None
        clean = " ".join(text.split()).strip(" .;:!\"'`*")
        if not clean or len(clean) > 200:
            return None
        if clean.casefold() in _CONTROL_WORDS:
            return cls("control")
        for kind, pattern in _PATTERNS:
            match = pattern.match(clean)
            if match:
                target = match.group("target").strip(" .,;:()")
                if not target:
                    return None
                if kind in GENE_KINDS:
                    target = target.upper()
                return cls(kind, target, (match.group("dose") or "").strip())
        return None


def perturbation_from_value(
    value: Any, kind: str | None = None, control_values: Sequence[str] = (), mapping: Mapping[str, str] | None = None
) -> Perturbation | None:
    """The canonical perturbation an ``.obs`` value stands for (``None`` = skip the cell).

    Order: user ``mapping`` (value -> canonical text), control values, known condition names,
    already-canonical text, else ``kind`` (default ``knockout``) of the value as a gene.
    """
    text = str(value).strip()
    low = text.casefold()
    if low in _SKIP_VALUES:
        return None
    if mapping and text in mapping:
        return Perturbation.parse(mapping[text])
    if low in {c.casefold() for c in control_values} or low in _CONTROL_WORDS:
        return Perturbation("control")
    if low in KNOWN_CONDITIONS:
        return Perturbation(*KNOWN_CONDITIONS[low])
    parsed = Perturbation.parse(text) if " " in text else None
    if parsed is not None:
        return parsed
    kind = kind or "knockout"
    return Perturbation(kind, text.upper() if kind in GENE_KINDS else text)


_FORMAT = "Think step by step inside <think></think>, then give only {what} inside <answer></answer>."


class PerturbationOptions(TaskOptions):
    """Options of :class:`PerturbationTask` (see its docstring for what each one does)."""

    perturbation_key: str | None = Field(None, description="obs column with the perturbation")
    perturbation_kind: str | None = Field(None, description="kind of bare perturbation names")
    control_value: str | None = Field(None, description="the perturbation column's value for controls")
    group_key: str | None = Field(None, description="pair controls within this obs column's groups")
    perturbation_map: dict[str, str] | None = Field(None, description="obs value -> canonical perturbation text")
    include_control: bool = Field(True, description="also build control -> control examples")
    mask_targets: bool = Field(True, description="hide candidate target genes from the dual")


@register_task
class PerturbationTask(Task):
    """Predict a perturbed cell from a control cell; the dual names the perturbation back.

    Options: ``perturbation_key`` (obs column; default recorded by ``cellduality sentences``),
    ``control_value``, ``group_key`` (controls are paired within a group, e.g. cell type),
    ``perturbation_kind`` (kind of bare names, default from a ``perturbation_type`` column or
    ``knockout``), ``perturbation_map`` (value -> canonical text), ``include_control``
    (control -> control examples, default true, so the dual must tell perturbed from not),
    ``mask_targets`` (hide candidate target genes from the dual, default true), ``max_genes``.
    """

    name: ClassVar[str] = "perturbation"
    kind: ClassVar = "generative"
    options_model: ClassVar[type[TaskOptions]] = PerturbationOptions
    offline_traces: ClassVar[str | None] = "perturbation"
    headline_metrics: ClassVar[tuple[str, ...]] = ("scfid", "mmd", "valid_rate", "reward_auc_contrast")
    scored_per_condition: ClassVar[bool] = True
    description: ClassVar[str] = "control cell + perturbation -> perturbed cell (dual: the perturbation)"
    cell_input: ClassVar[str | None] = "control"
    prediction_key: ClassVar[str | None] = "perturbed"
    primal_templates: ClassVar[tuple[str, ...]] = (
        "A control cell has these most expressed genes, highest first:\n{control}\n"
        "Predict the cell's top {n} genes after {perturbation}. "
        + _FORMAT.format(what="the gene symbols of the perturbed cell, separated by spaces,"),
        "Control cell sentence: {control}\nPerturbation: {perturbation}.\n"
        "Write the cell sentence ({n} genes ranked by expression) of this cell after the perturbation. "
        + _FORMAT.format(what="the perturbed cell sentence"),
        "Here is an unperturbed cell (genes ranked by expression): {control}\n"
        "How does its cell sentence look after {perturbation}? List its top {n} genes. "
        + _FORMAT.format(what="the genes"),
    )
    dual_templates: ClassVar[tuple[str, ...]] = (
        "A control cell has these most expressed genes, highest first:\n{control}\n"
        "After an unknown perturbation a matching cell looks like this:\n{perturbed}\n"
        "Which perturbation was applied? Choose one of: {perturbations}.\n"
        + _FORMAT.format(what="the perturbation"),
        "Control cell sentence: {control}\nPerturbed cell sentence: {perturbed}\n"
        "Name the perturbation that turned the first into the second, one of: {perturbations}. "
        + _FORMAT.format(what="the perturbation"),
    )

    @property
    def max_genes(self) -> int:
        return int(self.options["max_genes"])

    # ---- data --------------------------------------------------------------------------------
    @classmethod
    def _perturbations(cls, cells: CellSentenceDataset, options: Mapping[str, Any]) -> list[Perturbation | None]:
        column = options["perturbation_key"]
        kind = options.get("perturbation_kind")
        if kind is None and "perturbation_type" in cells.obs.columns:
            types = {str(v).casefold() for v in cells.obs["perturbation_type"].unique()}
            kinds = {TYPE_KINDS[t] for t in types if t in TYPE_KINDS}
            kind = kinds.pop() if len(kinds) == 1 else None
        controls = [str(options["control_value"])] if options.get("control_value") else []
        mapping = options.get("perturbation_map") or {}
        return [perturbation_from_value(v, kind, controls, mapping) for v in cells.obs[column]]

    @classmethod
    def context_from(cls, cells: CellSentenceDataset, indices: Sequence[int], **options: Any) -> TaskContext:
        key = options.get("perturbation_key") or cells.meta.get("perturbation_key")
        if not key:
            raise CellDualityError(
                "Task 'perturbation' needs a perturbation column but none was recorded; "
                "pass the option perturbation_key=COLUMN (or `cellduality sentences --perturbation-key`)."
            )
        options["perturbation_key"] = require_column(cells.obs, key, cls.name, "perturbation_key=COLUMN")
        if not options.get("control_value") and cells.meta.get("control_value"):
            options["control_value"] = cells.meta["control_value"]
        group = options.get("group_key", cells.meta.get("group_key"))
        options["group_key"] = group if group and group in cells.obs.columns else None
        perts = cls._perturbations(cells, options)
        seen = {perts[i] for i in indices if perts[i] is not None}
        if Perturbation("control") not in seen:
            raise CellDualityError(
                f"Task 'perturbation' found no control cells in column '{key}'; pass control_value=VALUE."
            )
        if len(seen) < 2:
            raise CellDualityError(f"Task 'perturbation' found no perturbed cells in column '{key}'.")
        ordered = sorted(seen - {Perturbation("control")}, key=lambda p: p.key) + [Perturbation("control")]
        return TaskContext(
            dataset=str(cells.meta.get("source", "")),
            genes=frozenset(cells.vocabulary),
            perturbations=tuple(p.render() for p in ordered),
            options={k: v for k, v in options.items() if v is not None},
        )

    def make_examples(self, cells: CellSentenceDataset, indices: Sequence[int], seed: int) -> list[Example]:
        perts = self._perturbations(cells, self.options)
        group_key = self.options.get("group_key")
        groups = [str(g) for g in cells.obs[group_key]] if group_key else ["all"] * len(perts)
        allowed = set(self.context.perturbations)
        controls: dict[str, list[int]] = defaultdict(list)
        for i in indices:
            if perts[i] == Perturbation("control"):
                controls[groups[i]].append(int(i))
        include_control = bool(self.options["include_control"])
        examples = []
        for i in indices:
            pert = perts[i]
            if pert is None or pert.render() not in allowed:
                continue
            if pert.kind == "control" and not include_control:
                continue
            cell_id = cell_of(cells, i)
            ex_seed = stable_seed(seed, self.name, cell_id)
            pool = [c for c in controls.get(groups[i], []) if c != i]
            matched = bool(pool)
            if not pool:  # no control in this group: any control (recorded in meta)
                pool = [c for group in controls.values() for c in group if c != i]
            if not pool:
                continue
            control = pool[rng_for(ex_seed, "control").randrange(len(pool))]
            examples.append(
                Example(
                    id=f"{self.name}:{cell_id}",
                    task=self.name,
                    input={
                        "control": genes_of(cells.sentences[control], self.max_genes),
                        "perturbation": pert.to_dict(),
                    },
                    target=genes_of(cells.sentences[i], self.max_genes),
                    seed=ex_seed,
                    meta={"cell_id": cell_id, "row": int(i), "control_id": cell_of(cells, control),
                          "group": groups[i], "group_matched": matched},
                )
            )
        return examples

    # ---- inference ---------------------------------------------------------------------------
    def inference_inputs(self) -> tuple[str, ...]:
        return ("perturbation",)

    def inference_input(self, values: dict[str, str]) -> dict[str, Any]:
        parsed = Perturbation.parse(values["perturbation"])
        if parsed is None or parsed.render() not in self.context.perturbations:
            raise CellDualityError(f"Unknown perturbation '{values['perturbation']}'; this model knows: "
                                   f"{', '.join(self.context.perturbations)}.")
        return {"perturbation": parsed.to_dict()}

    # ---- duality -----------------------------------------------------------------------------
    def split(self, example: Example) -> tuple[Known, Unknown]:
        return {"control": list(example.input["control"])}, {"perturbation": dict(example.input["perturbation"])}

    def primal_prompt(self, example: Example) -> str:
        template = choose(self.primal_templates, example.seed, "primal")
        pert = Perturbation.from_dict(example.input["perturbation"])
        return template.format(control=render_genes(example.input["control"]), perturbation=pert.render(),
                               n=self.max_genes)

    def render_answer(self, answer: Answer) -> str:
        return render_genes(answer)

    def parse_primal(self, text: str) -> Answer | None:
        return parse_genes(text, self.context.genes)

    @property
    def masked_targets(self) -> frozenset[str]:
        """Genes that name a candidate perturbation (``STAT1`` of ``knockout of STAT1``)."""
        if not self.options["mask_targets"]:
            return frozenset()
        parsed = (Perturbation.parse(c) for c in self.context.perturbations)
        return frozenset(p.target for p in parsed if p is not None and p.kind in GENE_KINDS)

    def dual_prompt(self, answer: Answer, known: Known, seed: int) -> str:
        """Both cells are shown without the candidates' target genes (option ``mask_targets``).

        Otherwise a policy could "write the answer as a gene": put ``STAT1`` in its sentence so
        the dual reads off ``knockout of STAT1``. Masking every candidate's target, in both
        cells, closes that channel without favouring any candidate.
        """
        masked = self.masked_targets
        template = choose(self.dual_templates, seed, "dual")
        control = [g for g in known.get("control") or [] if g not in masked]
        perturbed = [g for g in answer if g not in masked]
        return template.format(
            control=render_genes(genes_of(control, self.max_genes)),
            perturbed=render_genes(genes_of(perturbed, self.max_genes)),
            perturbations=format_choices(self.context.perturbations),
        )

    def baselines(self, train: Any, test: Any, *, inverse: Any = None, scorer: Any = None,
                  seed: int = 0) -> dict[str, dict[str, float]]:
        """"Predict the control cell" and "control plus the mean train shift of that perturbation"."""
        from cellduality.evaluation.baselines import perturbation_baselines

        return perturbation_baselines(scorer)

    def render_unknown(self, unknown: Unknown) -> str:
        return Perturbation.from_dict(unknown["perturbation"]).render()

    def unknown_candidates(self, unknown: Unknown) -> list[Unknown]:
        parsed = (Perturbation.parse(c) for c in self.context.perturbations)
        return [{"perturbation": p.to_dict()} for p in parsed if p is not None]

    def parse_dual(self, text: str) -> Unknown | None:
        """The perturbation named in ``<answer>``; one outside the candidate set is malformed."""
        content = extract_answer(text)
        pert = Perturbation.parse(content)
        candidates = [Perturbation.parse(c) for c in self.context.perturbations]
        if pert is None and content:  # a bare target ("STAT1") naming exactly one candidate
            named = [c for c in candidates if c and c.target and c.target.casefold() == content.casefold()]
            pert = named[0] if len(named) == 1 else None
        if pert is None:
            return None
        if candidates:  # strict: one of the candidates, returned in its canonical spelling
            pert = {c.key: c for c in candidates if c}.get(pert.key)
            if pert is None:
                return None
        return {"perturbation": pert.to_dict()}

    def distance(self, truth: Unknown, guess: Unknown | None) -> float:
        if not guess or not isinstance(guess, dict):
            return 1.0
        same = Perturbation.from_dict(truth["perturbation"]).key == Perturbation.from_dict(guess["perturbation"]).key
        return 0.0 if same else 1.0

    def ground_truth_score(self, target: Answer, answer: Answer | None) -> float:
        return rwjs(target, answer) if answer else 0.0

    def claim_cells(self, prompt: Any, response: str) -> tuple[list[str] | None, list[str] | None]:
        """``rank N → M``: N in the control cell of the prompt, M in the answer's perturbed cell."""
        from cellduality.faithfulness import prompt_field

        control = prompt_field(prompt, self.primal_templates, "control")
        after = self.parse_primal(response)
        return (control.split() if control else None), (list(after) if after else None)
