"""The offline knowledge-grounded teacher: no API, the default.

It learns from the *training* split of the task folder what a literature-reading teacher would
bring -- which genes mark which cell type or response (:class:`~.knowledge.ClassProfiles`) and
which genes a perturbation moves (:class:`~.knowledge.PerturbationShifts`) -- and writes short,
varied traces that cite the genes it actually used, with their ranks and training frequencies.

It *samples*: classification answers are drawn from a softmax over its naive-Bayes scores and
generated cells from noisy rankings, both at ``temperature``, so its answers can be wrong and
rejection sampling / rank-aware filtering have something to filter. Dual traces explain the
reference answer (the paper prompts the teacher with it); their claims are statistics of the
training cells, never invented.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellduality.errors import TeacherError
from cellduality.tasks.base import Task, format_response, loads
from cellduality.tasks.inpainting import full_cell  # noqa: F401  (re-exported: tests and API teachers use it)
from cellduality.tasks.text import stable_seed
from cellduality.teacher.base import Generation, Teacher, TeacherRequest
from cellduality.teacher.knowledge import ClassProfiles, PerturbationShifts, rank_of


@dataclass(frozen=True)
class TraceWriter:
    """How the offline teacher learns from, and writes traces for, one family of tasks.

    A task names its writer (:attr:`cellduality.tasks.base.Task.offline_traces`); the teacher
    never asks which task class it has. ``material(task, known, unknown, target)`` turns one
    primal training row into a tuple, ``fit(*columns)`` turns those tuples (as columns) into the
    knowledge the writers cite, and ``primal`` / ``dual`` write one response
    ``(teacher, task, request, rng) -> text``.
    """

    material: Callable[[Task, Any, Any, Any], tuple]
    fit: Callable[..., Any]
    primal: Callable[[OfflineTeacher, Task, TeacherRequest, random.Random], str]
    dual: Callable[[OfflineTeacher, Task, TeacherRequest, random.Random], str]


TRACE_WRITERS: dict[str, TraceWriter] = {}
"""The offline teacher's trace writers by name (filled at the end of this module)."""


def register_trace_writer(name: str, writer: TraceWriter) -> TraceWriter:
    """Make ``writer`` available to tasks whose ``offline_traces`` is ``name`` (plug-ins may add one)."""
    TRACE_WRITERS[name] = writer
    return writer


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _softmax_sample(scores: np.ndarray, temperature: float, rng: random.Random) -> int:
    """Sample an index from ``softmax(z / T)`` of the z-scored ``scores`` (T = 0: argmax)."""
    if temperature <= 0 or len(scores) == 1:
        return int(np.argmax(scores))
    z = (scores - scores.mean()) / (scores.std() + 1e-9)
    p = np.exp((z - z.max()) / temperature)
    p /= p.sum()
    return rng.choices(range(len(scores)), weights=p.tolist())[0]


class OfflineTeacher(Teacher):
    """Knowledge-grounded traces for every task that names a :data:`TRACE_WRITERS` entry, fitted on training rows."""

    name = "offline"

    def __init__(self, tasks: Mapping[str, Task], temperature: float = 0.5, seed: int = 0, noise: float = 0.05) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.noise = float(noise)
        self.knowledge: dict[str, Any] = {}
        """What each task's writer fitted (:class:`ClassProfiles`, :class:`PerturbationShifts`, ...)."""

    @property
    def profiles(self) -> dict[str, ClassProfiles]:
        """The class profiles fitted per task (faithfulness checks read them)."""
        return {k: v for k, v in self.knowledge.items() if isinstance(v, ClassProfiles)}

    @property
    def shifts(self) -> dict[str, PerturbationShifts]:
        return {k: v for k, v in self.knowledge.items() if isinstance(v, PerturbationShifts)}

    def _writer(self, task: Task) -> TraceWriter:
        writer = TRACE_WRITERS.get(task.offline_traces or "")
        if writer is None:
            raise TeacherError(f"The offline teacher cannot write traces for task '{task.name}'; use --teacher openai.")
        return writer

    def describe(self) -> dict[str, Any]:
        return {"teacher": self.name, "temperature": self.temperature, "seed": self.seed, "noise": self.noise}

    # ------------------------------------------------------------------ fitting
    def fit(self, rows: Iterable[Mapping[str, Any]]) -> OfflineTeacher:
        """Learn profiles and shifts from *primal training* rows (JSON columns as stored)."""
        writers = {name: self._writer(task) for name, task in self.tasks.items()}
        material: dict[str, list[tuple]] = {}
        for row in rows:
            task = self.tasks.get(row["task"])
            if task is None:
                continue
            known, unknown, target = loads(row["known"]), loads(row["unknown"]), loads(row["target"])
            material.setdefault(task.name, []).append(writers[task.name].material(task, known, unknown, target))
        for name in self.tasks:
            if not material.get(name):
                raise TeacherError(
                    f"The training split has no rows of task '{name}' to learn from; rebuild the tasks folder."
                )
            self.knowledge[name] = writers[name].fit(*map(list, zip(*material[name], strict=True)))
        return self

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[TeacherRequest], n: int) -> list[Generation]:
        out = []
        for request in requests:
            self.usage.add(requests=1)
            task = self.tasks.get(request.task)
            if task is None or request.task not in self.knowledge:
                self.usage.add(failures=1)
                out.append(Generation([], error=f"{request.key}: the offline teacher was not fitted for task '{request.task}'"))
                continue
            texts = []
            for k in range(n):
                rng = random.Random(stable_seed(self.seed, request.key, request.seed, k))
                texts.append(self._write(task, request, rng))
            out.append(Generation(texts))
        return out

    def _write(self, task: Task, request: TeacherRequest, rng: random.Random) -> str:
        writer = self._writer(task)
        return (writer.dual if request.direction == "dual" else writer.primal)(self, task, request, rng)

    # ---- classification (annotation, sensitivity) -------------------------------------------
    def _explain_label(self, profiles: ClassProfiles, cell: Sequence[str], label: str, rng: random.Random,
                       context: str = "") -> str:
        evidence = profiles.evidence(cell, label, k=rng.choice((2, 3, 3)))
        if not evidence:
            return (f"{context}None of the top genes is specific to any class in the training data; "
                    f"by overall profile similarity the best match is {label}.")
        cites = []
        for gene, rank, _ in evidence:
            inside, outside = profiles.frequency_of(gene, label)
            # the label before its number: a decoder that knows the training frequencies can then copy
            # the number the model is about to write (cellduality.models.copy_ranks)
            cites.append(rng.choice((
                f"{gene} (rank {rank}; among {label} training cells {_pct(inside)}, among others {_pct(outside)})",
                f"{gene} at rank {rank} (in {label} cells {_pct(inside)}, elsewhere {_pct(outside)})",
            )))
        opening = rng.choice((
            "The informative genes here are ",
            "Looking for class-specific genes among the top ranks: ",
            "Key evidence: ",
        ))
        closing = rng.choice((
            f"Together these point to {label}.",
            f"This profile matches {label} best in the training data.",
            f"So the cell is most consistent with {label}.",
        ))
        return f"{context}{opening}{_join(cites)}. {closing}"

    def _classify(self, task: Task, request: TeacherRequest, rng: random.Random) -> str:
        profiles = self.knowledge[task.name]
        cell = task.input_cell(request.known, request.unknown) or []
        scores = profiles.scores(cell)
        label = profiles.labels[_softmax_sample(scores, self.temperature, rng)]
        ranked = [profiles.labels[i] for i in np.argsort(-scores)]
        context = f"The cell was exposed to {request.known['drug']}. " if request.known.get("drug") else ""
        text = self._explain_label(profiles, cell, label, rng, context)
        runner = next((lab for lab in ranked if lab != label), None)
        if runner is not None and rng.random() < 0.5:
            alt = profiles.evidence(cell, runner, k=1)
            if alt:
                text += f" {alt[0][0]} (rank {alt[0][1]}) hints at {runner}, but the evidence for it is weaker."
        return format_response(text, task.render_answer(label))

    def _inpainting_dual(self, task: Task, request: TeacherRequest, rng: random.Random) -> str:
        profiles = self.knowledge[task.name]
        label = str(loads_if_str(request.target))
        masked = request.known.get("masked") or []
        gaps = [i + 1 for i, g in enumerate(masked) if g is None]
        hidden = list(request.unknown.get("hidden") or [])
        drug = f" treated with {request.known['drug']}" if request.known.get("drug") else ""
        notes = []
        for gene in hidden[: rng.choice((3, 4))]:
            inside, outside = profiles.frequency_of(gene, label) if label in profiles.labels else (0.0, 0.0)
            typical = profiles.typical_rank(gene, label) if label in profiles.labels else None
            where = f", typical rank {typical:.0f}" if typical is not None else ""
            notes.append(f"{gene} ({_pct(inside)} of {label} cells{where}; {_pct(outside)} of others)")
        opening = rng.choice((
            f"A {label} cell{drug} with {len(gaps)} hidden positions (ranks {_join([str(g) for g in gaps[:6]])}{'…' if len(gaps) > 6 else ''}).",
            f"The cell is {label}{drug}; {len(gaps)} of its top genes are masked.",
        ))
        middle = rng.choice((
            " Genes common in this class but absent from the observed list fill the gaps: ",
            " In the training data, frequent genes of this class that are not yet observed are ",
        ))
        closing = rng.choice((
            " I place them by their typical ranks and add the remaining ones in order.",
            " Ordered by typical rank, they complete the sentence.",
        ))
        return format_response(f"{opening}{middle}{_join(notes)}.{closing}", request.reference or "")

    # ---- generation --------------------------------------------------------------------------
    def _sample_ranking(self, base: np.ndarray, genes: Sequence[str], length: int, rng: random.Random) -> list[str]:
        """Top ``length`` genes of ``base`` perturbed with Gumbel noise (scale ``noise * T``)."""
        rs = np.random.default_rng(rng.getrandbits(32))
        scale = self.noise * self.temperature
        noisy = base + scale * rs.gumbel(size=base.shape) * (base > 0)
        order = np.argsort(-noisy)
        return [genes[i] for i in order[:length] if base[i] > 0]

    def _generate_cell(self, task: Any, request: TeacherRequest, rng: random.Random) -> str:
        profiles = self.knowledge[task.name]
        label = str(request.unknown.get("cell_type", ""))
        if label not in profiles.labels:
            return format_response(f"No training cells of type {label} are known to me.", "")
        c = profiles.labels.index(label)
        length = min(task.max_genes, profiles.length.get(label, task.max_genes))
        cell = self._sample_ranking(profiles.mean_weight[c], profiles.genes, length, rng)
        ranks = rank_of(cell)
        markers = [g for g in profiles.markers(label, k=8) if g in ranks][: rng.choice((2, 3))]
        top = cell[:3]
        cites = [f"{g} (rank {ranks[g]}; in {_pct(profiles.frequency_of(g, label)[0])} of {label} cells)" for g in markers]
        text = rng.choice((
            f"{label} training cells ({profiles.n_cells[label]}) are led by {_join(top)}.",
            f"Start from the typical ranking of {label} cells in the training data: {_join(top)} come first.",
        ))
        if cites:
            text += rng.choice((
                f" Their distinctive markers are {_join(cites)}, which I keep near their typical ranks.",
                f" I include the {label} markers {_join(cites)}.",
            ))
        text += rng.choice((" The rest follows the class's mean ranking with some cell-to-cell variation.",
                            " Lower ranks follow typical expression, allowing some variability."))
        return format_response(text, task.render_answer(cell))

    def _generation_dual(self, task: Any, request: TeacherRequest, rng: random.Random) -> str:
        profiles = self.knowledge[task.name]
        cell = list(loads_if_str(request.target) or [])[: task.max_genes]
        label = str(request.unknown.get("cell_type", ""))
        text = self._explain_label(profiles, cell, label, rng) if label in profiles.labels else ""
        return format_response(text or f"The profile matches {label}.", request.reference or label)

    # ---- perturbation ------------------------------------------------------------------------
    def _perturb(self, task: Any, request: TeacherRequest, rng: random.Random) -> str:
        shifts = self.knowledge[task.name]
        name = task.render_unknown(request.unknown)
        control = list(request.known.get("control") or [])
        base = np.zeros(len(shifts.genes), dtype=np.float32)
        for gene, weight in zip(control, _weights(len(control)), strict=True):
            if gene in shifts.index:
                base[shifts.index[gene]] = weight
        vec = shifts.vector(name)
        moved = np.clip(base + vec, 0.0, None)
        cell = self._sample_ranking(moved, shifts.genes, len(control) or task.max_genes, rng)
        ranks, before = rank_of(cell), rank_of(control)
        up, down = shifts.top_moved(name, k=6)
        ups = [f"{g} (rank {before.get(g, '—')} → {ranks[g]})" for g, _ in up if g in ranks][: rng.choice((2, 3))]
        downs = [g for g, _ in down if g in before and ranks.get(g, 999) > before[g]][:2]
        if name == task.render_unknown({"perturbation": {"kind": "control"}}) or not (ups or downs):
            text = rng.choice((
                f"With {name} the training pairs show no consistent shift, so I keep the control's ranking "
                f"({_join(control[:3])} first) with small cell-to-cell changes.",
                f"For {name}, perturbed and control cells rank genes alike in training; the answer stays close "
                f"to the control, led by {_join(control[:3])}.",
            ))
        else:
            parts = []
            if ups:
                parts.append(f"raises {_join(ups)}")
            if downs:
                parts.append(f"lowers {_join(downs)}")
            text = rng.choice((
                f"In {shifts.n_pairs.get(name, 0)} training pairs, {name} {' and '.join(parts)} relative to the control.",
                f"Applying the training shift of {name} to this control cell: it {' and '.join(parts)}.",
            )) + rng.choice((" Other genes keep roughly their control ranks.",
                             " The remaining genes follow the control ranking."))
        return format_response(text, task.render_answer(cell))

    def _perturbation_dual(self, task: Any, request: TeacherRequest, rng: random.Random) -> str:
        shifts = self.knowledge[task.name]
        control = list(request.known.get("control") or [])
        post = list(loads_if_str(request.target) or [])
        name = request.reference or task.render_unknown(request.unknown)
        before, after = rank_of(control), rank_of(post)
        up, down = shifts.top_moved(name, k=8)
        rose = [f"{g} ({before.get(g, 'absent')} → {after[g]})" for g, _ in up
                if g in after and after[g] < before.get(g, 10**6)][:3]
        fell = [f"{g} ({before[g]} → {after.get(g, 'absent')})" for g, _ in down
                if g in before and after.get(g, 10**6) > before[g]][:2]
        is_control = name == task.render_unknown({"perturbation": {"kind": "control"}})
        if is_control:
            signature = [g for other in shifts.perturbations if other != name for g, _ in shifts.top_moved(other, k=4)[0]]
            quiet = [f"{g} {'not in the top genes' if g not in after else f'at rank {after[g]}'}"
                     for g in dict.fromkeys(signature) if after.get(g, 10**6) >= before.get(g, 10**6)][:3]
            shared = len(set(control) & set(post))
            text = rng.choice((
                f"The genes that perturbations raise in the training pairs stay put here ({_join(quiet) or 'none moved'}); "
                f"the cells share {shared} top genes and differ only by ordinary cell-to-cell variation, so {name}.",
                f"{shared} top genes are shared and no perturbation signature appears "
                f"({_join(quiet) or 'no signature gene rises'}), which fits {name}.",
            ))
        elif rose or fell:
            moves = "; ".join(x for x in (f"up: {_join(rose)}" if rose else "", f"down: {_join(fell)}" if fell else "") if x)
            text = rng.choice((
                f"Comparing the two cells, the genes that move ({moves}) are those {name} moves in the training pairs.",
                f"Changes from control to perturbed cell — {moves} — match the training signature of {name}.",
            ))
        else:
            text = (f"The signature genes of {name} barely move between these two cells, but among the candidates "
                    f"its training shift still explains the difference best, so {name}.")
        return format_response(text, name)


def _weights(n: int) -> list[float]:
    return [1.0 / np.log2(2 + i) for i in range(n)]


def loads_if_str(value: Any) -> Any:
    """Request fields may hold decoded values or JSON strings (as stored in datasets)."""
    if isinstance(value, str):
        try:
            return loads(value)
        except ValueError:
            return value
    return value


# ---- the built-in writers (a task names one through Task.offline_traces) ----------------------
register_trace_writer("labels", TraceWriter(
    material=lambda task, known, unknown, target: (task.input_cell(known, unknown), str(target)),
    fit=ClassProfiles.fit, primal=OfflineTeacher._classify, dual=OfflineTeacher._inpainting_dual))
register_trace_writer("generation", TraceWriter(
    material=lambda task, known, unknown, target: (list(target), task.render_unknown(unknown)),
    fit=ClassProfiles.fit, primal=OfflineTeacher._generate_cell, dual=OfflineTeacher._generation_dual))
register_trace_writer("perturbation", TraceWriter(
    material=lambda task, known, unknown, target: (list(known["control"]), list(target), task.render_unknown(unknown)),
    fit=PerturbationShifts.fit, primal=OfflineTeacher._perturb, dual=OfflineTeacher._perturbation_dual))
