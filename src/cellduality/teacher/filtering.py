"""Which teacher candidates become SFT rows (paper §3.3.1).

* Primal, classification (annotation, sensitivity): **rejection sampling** -- keep a candidate
  only if its parsed answer equals the reference label (``Task.ground_truth_score == 1``).
* Primal, generative (generation, perturbation): **rank-aware filtering** -- keep a candidate
  only if its cell sentence has ``RWJS(reference, candidate) >= threshold``
  (``Task.ground_truth_score`` is that RWJS).
* Dual rows: the teacher explains a known answer; keep a candidate whose own dual answer agrees
  with the reference (``1 - Task.distance >= dual_threshold``). The kept completion always ends in
  the canonical reference ``x_u``, as the paper's dual set pairs ``(y*, x_k)`` with ``x_u``.

Every kept completion is re-rendered canonically -- ``format_response(reasoning, answer)`` -- so
SFT teaches one answer format whatever spacing or casing the teacher used. A candidate without
reasoning is rejected: the point of the data is the trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cellduality.tasks.base import Task, extract_reasoning, format_response


@dataclass(frozen=True)
class Verdict:
    """The judgement of one candidate; ``completion`` is the canonical text when accepted."""

    accepted: bool
    score: float
    reason: str  # "accepted", "malformed", "no reasoning", "wrong answer", "below threshold"
    completion: str | None = None


def judge_primal(task: Task, target: Any, text: str, threshold: float) -> Verdict:
    """Rejection sampling (classification) or rank-aware filtering (generative) of one candidate."""
    parsed = task.parse_primal(text)
    if parsed is None:
        return Verdict(False, 0.0, "malformed")
    score = float(task.ground_truth_score(target, parsed))
    reasoning = extract_reasoning(text)
    if task.kind == "classification":
        ok, why = score >= 1.0, "wrong answer"
    else:
        ok, why = score >= threshold, "below threshold"
    if not ok:
        return Verdict(False, score, why)
    if not reasoning:
        return Verdict(False, score, "no reasoning")
    return Verdict(True, score, "accepted", format_response(reasoning, task.render_answer(parsed)))


def judge_dual(task: Task, unknown: dict[str, Any], reference: str, text: str, dual_threshold: float) -> Verdict:
    """Keep a dual trace whose answer agrees with ``x_u``; the completion carries the canonical ``x_u``."""
    if task.parse_dual(text) is None:
        return Verdict(False, 0.0, "malformed")
    score = task.duality_score(unknown, text)
    if score < dual_threshold:
        return Verdict(False, score, "wrong answer")
    reasoning = extract_reasoning(text)
    if not reasoning:
        return Verdict(False, score, "no reasoning")
    return Verdict(True, score, "accepted", format_response(reasoning, reference))


def select(verdicts: list[Verdict], keep: int) -> list[Verdict]:
    """The best ``keep`` accepted candidates (highest score first, then candidate order), distinct texts."""
    accepted = [v for v in verdicts if v.accepted]
    ordered = sorted(enumerate(accepted), key=lambda iv: (-iv[1].score, iv[0]))
    chosen: list[Verdict] = []
    seen: set[str] = set()
    for _, verdict in ordered:
        if verdict.completion in seen:
            continue
        seen.add(verdict.completion or "")
        chosen.append(verdict)
        if len(chosen) >= keep:
            break
    return chosen
