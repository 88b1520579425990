"""Is the reasoning true of the cell it explains? Claim extraction and verdicts (issue #13).

A response's ``<think>`` text makes three kinds of checkable claims:

* about the **input cell** -- ``GENE at rank N`` / ``GENE (rank N`` (the gene is at rank N),
  ``GENE (rank N → M)`` (rank N before, M after: perturbation), ``GENE is among the top N``,
  ``GENE is absent`` / ``not in the top genes``. Checked against the cell *in the prompt* (or, for
  tasks whose answer is a cell, the answer's cell), never against a label;
* about the **training data** -- ``P% of LABEL cells`` (with ``Q% of others`` / ``Q% elsewhere``)
  and ``typical rank T`` against the class frequencies the offline teacher fitted
  (:class:`~cellduality.teacher.knowledge.ClassProfiles`), within :data:`FREQ_TOLERANCE` points;
  *unchecked* (not scored) when that knowledge is not available;
* about the **answer** -- the label the reasoning concludes with (``point to X``, ``matches X``,
  ``consistent with X``, ``the best match is X``) must equal the ``<answer>``.

A gene cited in a claim that is not in the task's gene vocabulary is a *made-up gene* (false).
Everything here reads the prompt and the response only, so the per-response score is a
label-free reward (:class:`FaithfulnessReward`). Parsers never raise on model output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.models.copy_ranks import InputCell
    from cellduality.tasks.base import Task
    from cellduality.teacher.knowledge import ClassProfiles

FREQ_TOLERANCE = 5.0
"""Percentage points a stated training frequency may differ from the fitted one (the teacher rounds)."""
RANK_TOLERANCE = 1.0
"""How far a stated *typical* rank may be from the fitted mean rank (the teacher rounds it)."""
FALSE_CLAIM_MODES = ("mark", "drop", "keep")

Verdict = Literal["true", "false", "unchecked"]
About = Literal["cell", "training", "answer"]

_SYMBOL = r"[A-Z0-9][A-Za-z0-9.\-]*[A-Za-z0-9]|[A-Z]"
_ARROW = r"\s*(?:→|->)\s*"
_RANK_VALUE = r"(?:\d+|—|-|absent)"
_CITE = re.compile(
    rf"(?<![\w\-+/])(?P<gene>{_SYMBOL})"
    rf"(?:\s+(?:is\s+)?(?:at\s+rank|ranked(?:\s+at)?|ranks)\s+#?(?P<rank>\d+))?"
    r"(?P<paren>\s*\([^()]*\))?"
)
_PAREN_RANK = re.compile(rf"^\(\s*(?:rank\s+|#)(?P<before>{_RANK_VALUE})(?:{_ARROW}(?P<after>{_RANK_VALUE}))?")
_TOP = re.compile(rf"(?<![\w\-+/])(?P<gene>{_SYMBOL})\s+(?:is\s+)?(?:among|in|within)\s+the\s+top[\s-]?(?P<n>\d+)")
_ABSENT = re.compile(
    rf"(?<![\w\-+/])(?P<gene>{_SYMBOL})\s+(?:is\s+)?(?:absent|missing|not\s+expressed|"
    r"not\s+(?:in|among)\s+the\s+(?:top\s+genes|top[\s-]?(?P<n>\d+)|cell))"
)
_PCT = r"(?P<{name}>\d+(?:\.\d+)?)\s*%"
_OUTSIDE = re.compile(_PCT.format(name="out") + r"\s+(?:of\s+(?:the\s+)?others|elsewhere|of\s+other\s+cells)")
_OUTSIDE_FIRST = re.compile(r"(?:among\s+(?:the\s+)?others|elsewhere)\s+" + _PCT.format(name="out"))
_TYPICAL = re.compile(r"typical\s+rank\s+(?P<t>\d+(?:\.\d+)?)")
_CUES = (r"points?\s+to|pointing\s+to|match(?:es)?|consistent\s+with|best\s+match\s+is|"
         r"(?:the\s+)?cell\s+is|it\s+is|classif(?:y|ied)\s+(?:it\s+)?as|conclude(?:s)?(?:\s+that)?(?:\s+it\s+is)?")
_ENGLISH = re.compile(r"[A-Z][a-z]+")  # "Key", "Together": capitalised words are not human gene symbols


@dataclass(frozen=True)
class Claim:
    """One checked statement of the reasoning: its text span, what it is about and the verdict."""

    kind: str  # rank | top | absent | frequency | typical_rank | conclusion
    about: About
    text: str
    start: int
    end: int
    verdict: Verdict
    reason: str = ""
    gene: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "about": self.about, "text": self.text, "verdict": self.verdict,
                "reason": self.reason, "gene": self.gene}


@dataclass
class FaithfulnessReport:
    """Per-claim verdicts of one response and its score (share of checked claims that are true)."""

    reasoning: str
    claims: list[Claim] = field(default_factory=list)
    conclusion: str | None = None
    answer: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def checked(self) -> list[Claim]:
        return [c for c in self.claims if c.verdict != "unchecked"]

    @property
    def n_true(self) -> int:
        return sum(c.verdict == "true" for c in self.claims)

    @property
    def n_false(self) -> int:
        return sum(c.verdict == "false" for c in self.claims)

    @property
    def score(self) -> float:
        """Share of checked claims that are true; ``nan`` when the reasoning makes none."""
        checked = self.checked
        return self.n_true / len(checked) if checked else float("nan")

    @property
    def all_true(self) -> bool:
        """Every checked claim is true (and there is at least one)."""
        return bool(self.checked) and self.n_false == 0

    @property
    def conclusion_matches(self) -> bool | None:
        """Whether the stated conclusion equals the answer; ``None`` when no conclusion is stated."""
        claim = next((c for c in self.claims if c.kind == "conclusion"), None)
        return None if claim is None else claim.verdict == "true"

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "all_true": self.all_true, "conclusion": self.conclusion,
                "answer": self.answer, "claims": [c.to_dict() for c in self.claims], "notes": list(self.notes)}


# --------------------------------------------------------------------------------------------
# Reading the prompt
# --------------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{(\w+)\}")


def prompt_cell_reader(tasks: Mapping[str, Task],
                       knowledge: Mapping[str, ClassProfiles] | None = None) -> Callable[[str], InputCell | None]:
    """``raw prompt -> its input cell`` over ``tasks`` (the first task whose templates fit).

    For copy-aware decoding (:class:`~cellduality.models.copy_ranks.CopyRanks`): the cell a
    reasoning's rank claims are about, read from the prompt alone (:meth:`Task.claim_cells`).
    """
    from cellduality.models.copy_ranks import InputCell

    labels = {name: [task.render_answer(a) for a in task.answer_candidates()] if task.kind == "classification" else []
              for name, task in tasks.items()}  # once, not per prompt
    frequency = {name: profiles.frequency_of for name, profiles in (knowledge or {}).items()}

    def cell_of(prompt: str) -> InputCell | None:
        for name, task in tasks.items():
            cell, _ = task.claim_cells(prompt, "")
            if cell:
                return InputCell(cell, task.cites_input_genes_only, labels[name], frequency.get(name))
        return None

    return cell_of


def copy_aware_decoding(tasks: Mapping[str, Task],
                        knowledge: Mapping[str, ClassProfiles] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`~cellduality.models.make_generate_fn` for copy-aware decoding
    (``knowledge``: the teacher's class profiles per task, :func:`training_knowledge`, to copy
    training frequencies too)."""
    from cellduality.tasks.base import gene_vocabulary

    labels = {task.render_answer(a) for task in tasks.values() for a in task.answer_candidates()}
    return {"cell_of": prompt_cell_reader(tasks, knowledge), "genes": gene_vocabulary(tasks),
            "labels": sorted(labels)}


def prompt_field(prompt: Any, templates: Sequence[str], name: str) -> str | None:
    """The value of ``{name}`` in ``prompt`` written from one of ``templates``; ``None`` if none fits.

    Each template becomes a regex (literal text escaped, ``{name}`` captured, other fields
    free); it is *searched*, so a prompt wrapped in a chat template still matches.
    """
    text = prompt_text(prompt)
    for template in templates:
        parts, last, seen = [], 0, False
        for match in _FIELD.finditer(template):
            parts.append(re.escape(template[last:match.start()]))
            if match.group(1) == name and not seen:
                parts.append(r"(?P<value>[^\n]+?)")
                seen = True
            else:
                parts.append(r"[^\n]*?")
            last = match.end()
        parts.append(re.escape(template[last:]))
        if not seen:
            continue
        found = re.search("".join(parts), text, re.DOTALL)
        if found:
            return found.group("value").strip()
    return None


def prompt_text(prompt: Any) -> str:
    """A prompt as text: a string, or the user turns of a conversational prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, Mapping)
                         and m.get("role", "user") != "assistant")
    return ""


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimContext:
    """What a task knows to check its reasoning; built by :meth:`Task.check_reasoning`.

    ``cell``: the cell plain rank claims are about (the prompt's input cell, or the answer's cell
    for tasks that write one); ``after``: the cell the right side of ``rank N → M`` is about;
    ``labels``: the candidate conclusions (empty: the task concludes nothing checkable);
    ``answer``: the parsed ``<answer>`` label; ``knowledge``: the fitted class profiles.
    """

    cell: Sequence[str] | None = None
    after: Sequence[str] | None = None
    genes: frozenset[str] = frozenset()
    labels: Sequence[str] = ()
    answer: str | None = None
    knowledge: ClassProfiles | None = None


def _label_pattern(labels: Sequence[str]) -> str | None:
    names = sorted({str(x) for x in labels if str(x)}, key=len, reverse=True)
    return "|".join(re.escape(n) for n in names) if names else None


def _canonical(label: str, labels: Sequence[str]) -> str:
    folded = label.casefold()
    return next((x for x in labels if x.casefold() == folded), label)


class _Checker:
    def __init__(self, reasoning: str, ctx: ClaimContext) -> None:
        self.text = reasoning
        self.ctx = ctx
        self.claims: list[Claim] = []
        self.ranks = cell_ranks(ctx.cell)
        self.after = cell_ranks(ctx.after)
        labels = list(ctx.labels) or (list(ctx.knowledge.labels) if ctx.knowledge is not None else [])
        self.labels = labels
        self.label_re = _label_pattern(labels)

    def add(self, kind: str, about: About, start: int, end: int, verdict: Verdict, reason: str = "",
            gene: str | None = None) -> None:
        self.claims.append(Claim(kind, about, self.text[start:end].strip(), start, end, verdict, reason, gene))

    def gene_ok(self, gene: str, kind: str, start: int, end: int) -> bool:
        """False (and a made-up-gene claim recorded) when the vocabulary does not know ``gene``."""
        if self.ctx.genes and gene not in self.ctx.genes:
            self.add(kind, "cell", start, end, "false", f"{gene} is not a gene of this model (made-up gene)", gene)
            return False
        return True

    def rank(self, gene: str, stated: str, ranks: dict[str, int] | None, start: int, end: int, which: str) -> None:
        if ranks is None:
            self.add("rank", "cell", start, end, "unchecked", f"no {which} cell to check against", gene)
            return
        actual = ranks.get(gene)
        if stated in ("—", "-", "absent"):
            verdict, reason = ("true", "") if actual is None else ("false", f"{gene} is at rank {actual} of the {which} cell")
            self.add("absent", "cell", start, end, verdict, reason, gene)
            return
        if actual is None:
            self.add("rank", "cell", start, end, "false", f"{gene} is not in the {which} cell", gene)
        elif actual != int(stated):
            self.add("rank", "cell", start, end, "false", f"{gene} is at rank {actual} of the {which} cell", gene)
        else:
            self.add("rank", "cell", start, end, "true", "", gene)

    def citations(self) -> None:
        for m in _CITE.finditer(self.text):
            gene, paren = m.group("gene"), m.group("paren") or ""
            body = paren.strip()
            paren_rank = _PAREN_RANK.match(body) if body else None
            freq = self.frequency_matches(body) if body else []
            typical = _TYPICAL.search(body) if body else None
            if not (m.group("rank") or paren_rank or freq or typical) or _ENGLISH.fullmatch(gene):
                continue
            start, end = m.start(), m.end()
            if not self.gene_ok(gene, "rank" if (m.group("rank") or paren_rank) else "frequency", start, end):
                continue
            if m.group("rank"):
                self.rank(gene, m.group("rank"), self.ranks if self.ctx.cell is not None else None, start, end, "input")
            if paren_rank:
                self.rank(gene, paren_rank.group("before"), self.ranks if self.ctx.cell is not None else None,
                          start, end, "input")
                if paren_rank.group("after"):
                    self.rank(gene, paren_rank.group("after"), self.after if self.ctx.after is not None else None,
                              start, end, "output")
            for label, inside, outside in freq:
                self.frequency(gene, label, inside, outside, start, end)
            if typical:
                self.typical(gene, float(typical.group("t")), freq[0][0] if freq else None, start, end)

    def frequency_matches(self, body: str) -> list[tuple[str, float, float | None]]:
        if self.label_re is None:
            return []
        pattern = re.compile(_PCT.format(name="inside") + rf"\s+of\s+(?:the\s+)?(?P<label>{self.label_re})"
                             r"(?![\w+])\s+(?:training\s+)?cells", re.IGNORECASE)
        label_first = re.compile(rf"\b(?:among|in)\s+(?:the\s+)?(?P<label>{self.label_re})(?![\w+])\s+"
                                 r"(?:training\s+)?cells\s+" + _PCT.format(name="inside"), re.IGNORECASE)
        out = []
        for m in pattern.finditer(body):  # "96% of X training cells vs 7% of others"
            rest = _OUTSIDE.search(body, m.end())
            out.append((_canonical(m.group("label"), self.labels), float(m.group("inside")),
                        float(rest.group("out")) if rest else None))
        for m in label_first.finditer(body):  # "among X training cells 96%, among others 7%"
            rest = _OUTSIDE_FIRST.search(body, m.end())
            out.append((_canonical(m.group("label"), self.labels), float(m.group("inside")),
                        float(rest.group("out")) if rest else None))
        return out

    def frequency(self, gene: str, label: str, inside: float, outside: float | None, start: int, end: int) -> None:
        profiles = self.ctx.knowledge
        if profiles is None or label not in profiles.labels:
            why = "training frequencies unavailable" if profiles is None else f"no class {label} in the training data"
            self.add("frequency", "training", start, end, "unchecked" if profiles is None else "false", why, gene)
            return
        fitted_in, fitted_out = (100 * x for x in profiles.frequency_of(gene, label))
        wrong = []
        if abs(fitted_in - inside) > FREQ_TOLERANCE:
            wrong.append(f"{gene} is in {fitted_in:.0f}% of {label} training cells")
        if outside is not None and abs(fitted_out - outside) > FREQ_TOLERANCE:
            wrong.append(f"{fitted_out:.0f}% of the others")
        self.add("frequency", "training", start, end, "false" if wrong else "true", ", ".join(wrong), gene)

    def typical(self, gene: str, stated: float, label: str | None, start: int, end: int) -> None:
        profiles = self.ctx.knowledge
        label = label or self.ctx.answer
        if profiles is None or label not in (profiles.labels if profiles else ()):
            self.add("typical_rank", "training", start, end, "unchecked", "training ranks unavailable", gene)
            return
        fitted = profiles.typical_rank(gene, label)
        if fitted is None or abs(fitted - stated) > RANK_TOLERANCE:
            reason = f"{gene} never occurs in {label} training cells" if fitted is None else \
                f"its typical rank in {label} training cells is {fitted:.0f}"
            self.add("typical_rank", "training", start, end, "false", reason, gene)
        else:
            self.add("typical_rank", "training", start, end, "true", "", gene)

    def top_and_absent(self) -> None:
        """``GENE is among the top N`` (rank <= N) and ``GENE is absent`` / ``not in the top N``."""
        for kind, pattern in (("top", _TOP), ("absent", _ABSENT)):
            for m in pattern.finditer(self.text):
                gene, n = m.group("gene"), m.group("n")
                if _ENGLISH.fullmatch(gene) or not self.gene_ok(gene, kind, m.start(), m.end()):
                    continue
                if self.ctx.cell is None:
                    self.add(kind, "cell", m.start(), m.end(), "unchecked", "no input cell to check against", gene)
                    continue
                actual = self.ranks.get(gene)
                if kind == "top":
                    ok = actual is not None and actual <= int(n)
                else:
                    ok = actual is None or (n is not None and actual > int(n))
                reason = "" if ok else (f"{gene} is at rank {actual} of the input cell" if actual
                                        else f"{gene} is not in the input cell")
                self.add(kind, "cell", m.start(), m.end(), "true" if ok else "false", reason, gene)

    def conclusion(self) -> str | None:
        if not self.ctx.labels or self.label_re is None:
            return None
        last = _last_conclusion(self.text, self.label_re)
        if last is None:
            return None
        stated = _canonical(last.group("label"), self.labels)
        answer = self.ctx.answer
        if answer is None:
            self.add("conclusion", "answer", last.start(), last.end(), "false", "the response has no valid <answer>")
        elif stated.casefold() != str(answer).casefold():
            self.add("conclusion", "answer", last.start(), last.end(), "false", f"the answer is {answer}")
        else:
            self.add("conclusion", "answer", last.start(), last.end(), "true")
        return stated


def _last_conclusion(text: str, label_re: str) -> re.Match[str] | None:
    pattern = re.compile(rf"\b(?:{_CUES})\s+(?:an?\s+|the\s+)?(?P<label>{label_re})(?![\w+])", re.IGNORECASE)
    found = list(pattern.finditer(text))
    return found[-1] if found else None


def concluded_label(reasoning: str, labels: Sequence[str]) -> str | None:
    """The label a reasoning concludes with (its last ``points to X`` / ``consistent with X`` ...), or ``None``."""
    label_re = _label_pattern(labels) if labels else None
    last = _last_conclusion(reasoning, label_re) if label_re else None
    return None if last is None else _canonical(last.group("label"), labels)


def cell_ranks(cell: Sequence[str] | None) -> dict[str, int]:
    """``{gene: rank}`` (from 1) of a cell sentence, each gene at its first occurrence."""
    ranks: dict[str, int] = {}
    for gene in cell or ():
        ranks.setdefault(str(gene), len(ranks) + 1)
    return ranks


def check_text(reasoning: str, ctx: ClaimContext) -> FaithfulnessReport:
    """Extract and check every claim of ``reasoning`` (the ``<think>`` text) under ``ctx``."""
    checker = _Checker(reasoning or "", ctx)
    checker.citations()
    checker.top_and_absent()
    conclusion = checker.conclusion()
    claims = sorted(checker.claims, key=lambda c: (c.start, c.end))
    notes = []
    if ctx.knowledge is None and any(c.about == "training" for c in claims):
        notes.append("training-data claims unchecked: the teacher's training frequencies are not available")
    return FaithfulnessReport(reasoning or "", claims, conclusion, ctx.answer, notes)


def repeated_citations(report: FaithfulnessReport) -> int:
    """Rank claims that cite a gene already cited by an earlier rank claim of the same response."""
    seen: set[str] = set()
    repeats = 0
    for claim in report.claims:
        if claim.kind == "rank" and claim.gene:
            repeats += claim.gene in seen
            seen.add(claim.gene)
    return repeats


# --------------------------------------------------------------------------------------------
# Rewriting the reasoning: mark or drop false claims
# --------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rewrite_reasoning(report: FaithfulnessReport, mode: str = "mark") -> str:
    """The reasoning with its false claims marked ``[unverified: … — why]``, dropped, or kept.

    ``drop`` removes every sentence that holds a false claim (a sentence is the smallest unit that
    still reads); ``keep`` returns the text unchanged.
    """
    if mode not in FALSE_CLAIM_MODES:
        from cellduality.errors import CellDualityError

        raise CellDualityError(f"Unknown false-claims mode '{mode}'; choose one of: {', '.join(FALSE_CLAIM_MODES)}.")
    text = report.reasoning
    false = [c for c in report.claims if c.verdict == "false"]
    if mode == "keep" or not false:
        return text
    if mode == "drop":
        kept, start = [], 0
        for end in [m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
            if not any(start <= c.start < end for c in false):
                kept.append(text[start:end].strip())
            start = end
        return " ".join(s for s in kept if s)
    spans: list[list[Any]] = []
    for claim in sorted(false, key=lambda c: c.start):
        if spans and claim.start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], claim.end)
            spans[-1][2].append(claim.reason)
        else:
            spans.append([claim.start, claim.end, [claim.reason]])
    out, last = [], 0
    for start, end, reasons in spans:
        body = text[start:end].rstrip()
        end = start + len(body)
        why = "; ".join(dict.fromkeys(r for r in reasons if r))
        out += [text[last:start], f"[unverified: {body}{' — ' + why if why else ''}]"]
        last = end
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Aggregates, knowledge, reward
# --------------------------------------------------------------------------------------------


def summarise(reports: Sequence[FaithfulnessReport]) -> dict[str, float]:
    """Evaluation metrics of many responses (rates in [0, 1]; ``nan`` where undefined).

    ``faithful_claims``: share of checked claims that are true (all responses pooled);
    ``faithful_cell_claims``: the same for claims about the input cell only;
    ``faithful_responses``: share of responses, among those making a checked claim, whose every
    claim is true; ``conclusion_match``: share of responses stating a conclusion whose conclusion
    equals the answer; ``claims_per_response``; ``rank_claims_in_cell`` / ``rank_claims_exact``
    (the issue's columns) and ``repeated_citations`` (share of rank claims re-citing a gene).
    """
    nan = float("nan")
    checked = [c for r in reports for c in r.checked]
    cell = [c for c in checked if c.about == "cell"]
    ranks = [c for r in reports for c in r.claims if c.kind == "rank" and c.verdict != "unchecked"]
    with_claims = [r for r in reports if r.checked]
    concluded = [r.conclusion_matches for r in reports if r.conclusion_matches is not None]
    rate = lambda hits, n: hits / n if n else nan  # noqa: E731
    return {
        "faithful_claims": rate(sum(c.verdict == "true" for c in checked), len(checked)),
        "faithful_cell_claims": rate(sum(c.verdict == "true" for c in cell), len(cell)),
        "faithful_responses": rate(sum(r.all_true for r in with_claims), len(with_claims)),
        "conclusion_match": rate(sum(concluded), len(concluded)),
        "claims_per_response": rate(len(checked), len(reports)),
        "rank_claims_in_cell": rate(sum("is not in" not in c.reason and "made-up" not in c.reason for c in ranks),
                                    len(ranks)),
        "rank_claims_exact": rate(sum(c.verdict == "true" for c in ranks), len(ranks)),
        "repeated_citations": rate(sum(repeated_citations(r) for r in reports), len(ranks)),
        "n_claims": float(len(checked)),
    }


def training_knowledge(tasks_dir: str | Path, tasks: Mapping[str, Task] | None = None) -> dict[str, ClassProfiles]:
    """The class profiles the offline teacher fits on ``TASKS_DIR``'s primal training rows.

    Refitting is deterministic (one pass over the rows), so these are the very frequencies the
    teacher's traces cite. Tasks without class profiles (perturbation) are left out.
    """
    from cellduality.tasks.builders import load_task_datasets, load_tasks
    from cellduality.teacher.offline import OfflineTeacher

    tasks = dict(tasks or load_tasks(tasks_dir))
    train = load_task_datasets(tasks_dir, "primal")["train"]
    present = set(train["task"])
    teacher = OfflineTeacher({n: t for n, t in tasks.items() if n in present}).fit(train)
    return dict(teacher.profiles)


def find_tasks_dir(model_dir: str | Path) -> Path | None:
    """The tasks folder a model was trained from, when its files record one that still exists."""
    import json

    folder = Path(model_dir)
    for name in ("metrics.json", "cellduality.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except ValueError:
            continue
        for key in ("tasks_dir",):
            value = info.get(key) or (info.get("grpo") or {}).get(key)
            if value and (Path(value) / "tasks.json").is_file() and (Path(value) / "primal").is_dir():
                return Path(value)
    return None


class FaithfulnessReward:
    """Label-free GRPO reward: the share of a completion's claims that are true of its prompt.

    A plain callable with TRL's signature ``(prompts, completions, **columns) -> list[float]``
    (not an ``nn.Module``, which TRL would treat as a reward model). It reads the ``task`` column
    and the prompt -- never ``target`` -- so it is as label-free as the duality reward. A
    completion that makes no checkable claim (or has no ``<think>``) gets 0: silence is not
    rewarded over true statements.
    """

    __name__ = "faithfulness"

    def __init__(self, tasks: Mapping[str, Task], knowledge: Mapping[str, ClassProfiles] | None = None) -> None:
        self.tasks = dict(tasks)
        self.knowledge = dict(knowledge or {})

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        from cellduality.rewards import completion_text

        names = list(kwargs.get("task") or [None] * len(completions))
        out = []
        for prompt, completion, name in zip(prompts, completions, names, strict=True):
            task = self.tasks.get(name) if name else (next(iter(self.tasks.values())) if len(self.tasks) == 1 else None)
            if task is None:
                out.append(0.0)
                continue
            # the claim parser is forgiving (any text -> claims, maybe none); an exception is a bug
            score = task.check_reasoning(prompt, completion_text(completion), self.knowledge.get(task.name)).score
            out.append(0.0 if score != score else float(score))
        return out


# --------------------------------------------------------------------------------------------
# Evaluation helpers: a model's predictions and the teacher's SFT traces (the ceiling)
# --------------------------------------------------------------------------------------------

METRICS = ("faithful_claims", "faithful_responses", "conclusion_match")
"""The faithfulness columns shown beside accuracy in reports."""


def knowledge_or_none(tasks_dir: str | Path, tasks: Mapping[str, Task]) -> dict[str, ClassProfiles]:
    """:func:`training_knowledge`, or ``{}`` when the folder cannot serve it (training claims unchecked)."""
    from cellduality.errors import CellDualityError

    try:
        return training_knowledge(tasks_dir, tasks)
    except (CellDualityError, FileNotFoundError, KeyError, ValueError):
        return {}


def score_responses(task: Task, prompts: Sequence[Any], responses: Sequence[str],
                    knowledge: ClassProfiles | None = None,
                    table: dict[str, list] | None = None) -> dict[str, float]:
    """Check every response and return :func:`summarise`'s metrics (prefixed as in ``metrics.json``).

    With ``table`` (a predictions table), adds per-row columns ``faithfulness`` (score),
    ``false_claims`` (count) and ``conclusion_matches``.
    """
    reports = [task.check_reasoning(p, r, knowledge) for p, r in zip(prompts, responses, strict=True)]
    if table is not None:
        table["faithfulness"] = [r.score for r in reports]
        table["false_claims"] = [r.n_false for r in reports]
        table["conclusion_matches"] = [r.conclusion_matches for r in reports]
    return summarise(reports)


def sft_faithfulness(sft_dir: str | Path, tasks_dir: str | Path, split: str = "train") -> dict[str, dict[str, float]]:
    """Faithfulness of the teacher's primal SFT traces per task: the ceiling a student can reach."""
    from cellduality.tasks.builders import load_tasks
    from cellduality.training.sft import load_sft_data

    tasks = load_tasks(tasks_dir)
    knowledge = knowledge_or_none(tasks_dir, tasks)
    rows = [r for r in load_sft_data(sft_dir)[split] if r["direction"] == "primal" and r["task"] in tasks]
    out = {}
    for name, task in tasks.items():
        mine = [r for r in rows if r["task"] == name]
        if mine:
            out[name] = score_responses(task, [r["prompt"] for r in mine], [r["completion"] for r in mine],
                                        knowledge.get(name))
    return out


def faithfulness_rewards(tasks: Mapping[str, Task], tasks_dir: str | Path, weight: float) -> list[FaithfulnessReward]:
    """GRPO's second reward (``[]`` when ``weight`` is 0); its weight goes to TRL's ``reward_weights``."""
    if weight <= 0:
        return []
    return [FaithfulnessReward(tasks, knowledge_or_none(tasks_dir, tasks))]


@dataclass
class CheckedReasoning:
    """What inference writes next to each cell: the reasoning (false claims marked, dropped or
    kept), its faithfulness score and false-claim count, and how the check was made."""

    reasoning: list[str]
    score: list[float]
    false_claims: list[int]
    info: dict[str, Any]


def check_for_inference(task: Task, prompts: Sequence[str], responses: Sequence[str], model_dir: str | Path,
                        mode: str = "mark", tasks_dir: str | Path | None = None) -> CheckedReasoning:
    """Check each response's reasoning against its prompt and rewrite it per ``mode``.

    Training-data claims are checked when the tasks folder the model learned from is known
    (``tasks_dir``, else the one its files record); otherwise they are left unchecked and
    ``info['training_claims']`` says so.
    """
    if mode not in FALSE_CLAIM_MODES:
        from cellduality.errors import CellDualityError

        raise CellDualityError(f"Unknown --false-claims '{mode}'; choose one of: {', '.join(FALSE_CLAIM_MODES)}.")
    source = Path(tasks_dir) if tasks_dir else find_tasks_dir(model_dir)
    if source is not None and not (source / "tasks.json").is_file():
        from cellduality.errors import CellDualityError

        raise CellDualityError(f"{source} is not a tasks folder; pass the folder `cellduality tasks build` wrote.")
    knowledge = knowledge_or_none(source, {task.name: task}) if source else {}
    reports = [task.check_reasoning(p, r, knowledge.get(task.name)) for p, r in zip(prompts, responses, strict=True)]
    scores = [r.score for r in reports]
    finite = [s for s in scores if s == s]
    info = {"false_claims": mode, "mean_faithfulness": float(sum(finite) / len(finite)) if finite else None,
            "cells_with_false_claims": int(sum(r.n_false > 0 for r in reports)),
            "training_claims": f"checked against {source}" if knowledge else
            "unchecked: the tasks folder the model learned from is unknown (pass --tasks)"}
    return CheckedReasoning([rewrite_reasoning(r, mode) for r in reports], scores, [r.n_false for r in reports], info)


def predictions_faithfulness(eval_dir: str | Path, tasks_dir: str | Path) -> dict[str, dict[str, float]]:
    """Faithfulness of the ``predictions_<task>.csv`` an evaluation folder holds (its prompts and outputs)."""
    import pandas as pd

    from cellduality.tasks.builders import load_tasks

    tasks = load_tasks(tasks_dir)
    knowledge = knowledge_or_none(tasks_dir, tasks)
    out = {}
    for name, task in tasks.items():
        path = Path(eval_dir) / f"predictions_{name}.csv"
        if path.is_file():
            table = pd.read_csv(path, keep_default_na=False)
            out[name] = score_responses(task, table["prompt"].tolist(), table["output"].astype(str).tolist(),
                                        knowledge.get(name))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cellduality.faithfulness TASKS_DIR [--sft SFT_DIR] [EVAL_DIR ...]``: the before/after table."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m cellduality.faithfulness", description=main.__doc__)
    parser.add_argument("tasks_dir", help="the tasks folder (its training rows give the teacher's frequencies)")
    parser.add_argument("--sft", help="an SFT data folder: the teacher's traces (the ceiling)")
    parser.add_argument("--split", default="train", help="SFT split to check (default train)")
    parser.add_argument("eval_dirs", nargs="*", help="evaluation folders holding predictions_<task>.csv")
    args = parser.parse_args(argv)
    rows = {}
    if args.sft:
        rows[f"teacher ({args.sft}, {args.split})"] = sft_faithfulness(args.sft, args.tasks_dir, args.split)
    for folder in args.eval_dirs:
        rows[folder] = predictions_faithfulness(folder, args.tasks_dir)
    pct = lambda v: "–" if v != v else f"{100 * v:.0f} %"  # noqa: E731
    print("| source | task | claims | true | cell claims true | gene in cell | exact rank | same gene again "
          "| all claims true | conclusion = answer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for source, by_task in rows.items():
        for task, m in by_task.items():
            print(f"| {source} | {task} | {m['n_claims']:,.0f} | {pct(m['faithful_claims'])} | "
                  f"{pct(m['faithful_cell_claims'])} | {pct(m['rank_claims_in_cell'])} | {pct(m['rank_claims_exact'])} | "
                  f"{pct(m['repeated_citations'])} | {pct(m['faithful_responses'])} | {pct(m['conclusion_match'])} |")
    print(json.dumps(rows, default=float), file=__import__("sys").stderr)


if __name__ == "__main__":
    main()
