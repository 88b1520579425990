"""The dual pass (paper Definition 3.1) written once: primal answer -> dual prompt -> dual answer -> score.

Three callers run it: the paper's duality reward (:class:`cellduality.rewards.DualityReward`),
duality reranking of sampled answers at inference and the read-back of generated cells
(:mod:`cellduality.inference.predict`). They used to build prompts, batch, parse and score each
in their own way; one function keeps the three reading the dual the same way, so an inference
confidence is the reward GRPO trained on, and a fix to the pass reaches all of them.

The likelihood reward reads the dual's *probability* of ``x_u`` instead of sampling it
(:meth:`cellduality.tasks.base.Task.likelihood_queries`); it is not a dual pass in this sense.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover  (tasks import rewards, which imports this module)
    from cellduality.tasks.base import Answer, Known, Task, Unknown

GenerateFn = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class DualQuery:
    """One primal answer ``y`` to run through its task's dual, with ``x_k`` and the example's seed.

    ``unknown`` is the true ``x_u`` when the caller has it (reward, reranking): the result is then
    scored ``1 - d(x_u, x̂_u)``. Read-back of a generated cell leaves it ``None``: only parsed.
    """

    task: Task
    answer: Answer
    known: Known
    seed: int
    unknown: Unknown | None = None


@dataclass(frozen=True)
class DualResult:
    """The dual's answer to one :class:`DualQuery`."""

    prompt: str
    text: str
    guess: Unknown | None
    """``x̂_u``: the parsed dual answer, ``None`` when the text is malformed."""
    score: float | None
    """``1 - d(x_u, x̂_u)`` in [0, 1] (:meth:`Task.score_guess`); ``None`` without ``x_u``."""

    @property
    def parsed(self) -> bool:
        return self.guess is not None


def dual_pass(queries: Sequence[DualQuery], generate: GenerateFn) -> list[DualResult]:
    """Build every dual prompt, answer them all in **one** ``generate`` call, parse and score.

    ``generate`` maps prompts to response texts (the live policy in GRPO, a greedy generator at
    inference). It is not called when there is no query. Only the dual parser is forgiving:
    malformed text gives ``guess=None`` and score 0; a wrong number of texts from ``generate``
    or a distance outside [0, 1] is a bug and raises.
    """
    if not queries:
        return []
    prompts = [q.task.dual_prompt(q.answer, q.known, q.seed) for q in queries]
    texts = list(generate(prompts))
    if len(texts) != len(prompts):
        raise ValueError(f"generate returned {len(texts)} texts for {len(prompts)} dual prompts")
    results = []
    for query, prompt, text in zip(queries, prompts, texts, strict=True):
        guess = query.task.parse_dual(text)
        score = None if query.unknown is None else query.task.score_guess(query.unknown, guess)
        results.append(DualResult(prompt, text, guess, score))
    return results


__all__ = ["DualQuery", "DualResult", "GenerateFn", "dual_pass"]
