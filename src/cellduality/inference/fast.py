"""Fast classification (annotation, sensitivity): labels and confidence without writing reasoning.

A model taught the answer-only form (``cellduality teach`` writes, for every kept primal row of a
classification task, a ``primal_direct`` row: the primal prompt plus ``DIRECT_INSTRUCTION``,
answered ``<answer> LABEL </answer>``; ``TeachConfig.direct_primal``) can be *asked* how probable
each candidate label is: each cell's prompt runs once and every label is scored teacher-forced
against its KV cache (:func:`~cellduality.models.candidates.score_candidates`); the label is the
argmax and the confidence its softmax posterior. No token is sampled, so this is deterministic
and costs about one forward pass per cell instead of hundreds of decoding steps. A model taught
the opt-in ``primal_answer`` rows (``direct_primal_prompt: answer_only``: the task's own prompt,
candidates first) is asked that way: the prompts' shared head runs once per call, twice the cells
per second, at a cost in accuracy measured in ``docs/performance.md``.

Reasoning is generated (greedy, length-sorted batches) only when asked: for every cell
(``explain=True``) or for the ``explain_least_confident`` cells the labels were least sure of.
An explained cell's label is then ranked *after its own reasoning* (same scorer, the reasoning as
prefix). The answer the text itself wrote is kept beside it (``FastResult.written``). Under
copy-aware decoding that answer follows the conclusion the reasoning states, and it can differ
from the ranking; the cells where it does are counted. The ranking stays the label: on six
out-of-domain models it was as accurate or more on five (Baron 73.6 against 66.3 %, Kang 71.6
against 70.4 %; docs/performance.md), though the written answer is what ``evaluate`` reads. A
model trained without answer-only rows cannot answer directly: it is explained for every cell,
with a one-line warning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellduality.tasks.base import (
    ANSWER_PROMPT,
    PRIMAL_DIRECT,
    Known,
    Task,
    Unknown,
    direct_prompt,
    direct_response,
    extract_reasoning,
    format_response,
)

if TYPE_CHECKING:  # pragma: no cover
    from cellduality.inference.model import CellDualityModel

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; the CLI draws one rich line per stage with it."""

_MARK = "\x00"


def answer_split(reasoning: str) -> tuple[str, str, str]:
    """``(prefix, lead, tail)`` with ``format_response(reasoning, L) == prefix + lead + L + tail``.

    The prefix ends at ``<answer>``; the whitespace after it (``lead``) goes with the label, the
    way tokenizers attach a leading space to the next word.
    """
    # no reasoning: the answer-only form (tasks.base.direct_response) that direct_prompt asks for
    head, tail = (format_response(reasoning, _MARK) if reasoning.strip() else direct_response(_MARK)).split(_MARK)
    prefix = head.rstrip()
    return prefix, head[len(prefix):], tail


def taught_form(model_dir: str | Path, task: str, _depth: int = 0) -> str | None:
    """Which answer-only form the model (or the SFT model it descends from) learnt for ``task``.

    :data:`~cellduality.tasks.base.PRIMAL_DIRECT` (the default),
    :data:`~cellduality.tasks.base.ANSWER_PROMPT` (the task's own answer-only prompt), ``""``
    (neither) or ``None`` (nothing on disk says). Read from the SFT summary (``directions``), else
    from the SFT data folder it records, following GRPO models to their parent.
    """
    info_path = Path(model_dir) / "cellduality.json"
    if _depth > 5 or not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    directions = (info.get("summary") or {}).get("directions")
    if isinstance(directions, dict):
        counts = {d: int(directions.get(f"{d}/{task}", 0)) for d in (ANSWER_PROMPT, PRIMAL_DIRECT)}
        counts[PRIMAL_DIRECT] += int(directions.get(PRIMAL_DIRECT, 0))  # summaries that did not split by task
        return next((d for d, count in counts.items() if count > 0), "")
    data = Path(str(info.get("sft_data") or ""))
    if info.get("sft_data") and (data / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        train = load_from_disk(str(data))["train"]
        taught = {d for d, t in zip(train["direction"], train["task"], strict=True) if t == task}
        return next((d for d in (ANSWER_PROMPT, PRIMAL_DIRECT) if d in taught), "")
    parent = info.get("parent_model")
    return taught_form(parent, task, _depth + 1) if parent else None


def answer_prompts(task: Task, form: str, prompts: Sequence[str], cells: Sequence[tuple[Known, Unknown]]) -> list[str]:
    """The prompts asking for the answer alone, in the ``form`` the model learnt (:func:`taught_form`)."""
    if form == PRIMAL_DIRECT:
        return [direct_prompt(p) for p in prompts]
    if len(cells) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(cells)} cells")
    out = [task.answer_only_prompt(known, unknown) for known, unknown in cells]
    if any(p is None for p in out):
        raise ValueError(f"task '{task.name}' has no answer-only prompt, yet the model was taught {ANSWER_PROMPT} rows")
    return out  # type: ignore[return-value]


@dataclass
class FastResult:
    """Per cell: label, posterior confidence, reasoning ('' when not explained), and what ran."""

    labels: list[Any]
    confidence: np.ndarray
    posterior: np.ndarray
    reasoning: list[str]
    explained: np.ndarray
    info: dict[str, Any]
    written: list[Any]
    """Per cell, the candidate the generated text answered (``None``: not explained, or no candidate)."""


def rank_labels(task: Task, mdl: CellDualityModel, prompts: Sequence[str], reasonings: Sequence[str] | None = None,
                progress: Progress | None = None, stage: str = "rank labels") -> np.ndarray:
    """Label posterior ``[cells, labels]`` after each prompt: the primal prompt followed by that
    cell's reasoning, or, where the reasoning is empty, an answer-only prompt (:func:`answer_prompts`)."""
    from cellduality.models.candidates import score_candidates

    labels = [task.render_answer(a) for a in task.answer_candidates()]
    if not labels:
        raise ValueError(f"{task.name} has no candidate answers; fast ranking serves classification tasks only")
    reasonings = list(reasonings) if reasonings is not None else [""] * len(prompts)
    splits = [answer_split(r) for r in reasonings]
    lead, tail = splits[0][1], splits[0][2]
    done = 0
    if progress is not None:
        progress(stage, 0, len(prompts))  # starts the line's clock

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(stage, done, len(prompts))

    scores = score_candidates(mdl.model, mdl.tokenizer, prompts, [s[0] for s in splits],
                              [f"{lead}{label}{tail}" for label in labels], on_batch=step)
    return scores.posterior()


def generate_sorted(mdl: CellDualityModel, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                    progress: Progress | None = None, stage: str = "write reasoning") -> list[str]:
    """Greedy completions with a non-empty ``<think>`` block, in batches of similar prompt length, in input order.

    Reasoning is required because a model taught answer-only rows would otherwise often skip it.
    """
    generate = mdl.generator(max_new_tokens=max_new_tokens, batch_size=batch_size, require_reasoning=True)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    if progress is not None:
        progress(stage, 0, len(prompts))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, text in zip(chunk, generate([prompts[i] for i in chunk]), strict=True):
            out[i] = text
        if progress is not None:
            progress(stage, min(start + batch_size, len(order)), len(order))
    return out


def classify_fast(
    task: Task,
    mdl: CellDualityModel,
    prompts: Sequence[str],
    cells: Sequence[tuple[Known, Unknown]],
    *,
    explain: bool = False,
    explain_least_confident: int = 0,
    direct: bool | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 160,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> FastResult:
    """Labels by likelihood for every cell; reasoning for all or the least confident (see module doc).

    ``prompts`` are the primal prompts (what reasoning is written after), ``cells`` each prompt's
    input as ``(x_k, x_u)`` (``task.split(example)``; what the answer-only prompt is built from).
    ``direct=None`` reads from the model's files which answer-only form it learnt
    (:func:`taught_form`); ``True``/``False`` overrides whether it learnt one.
    """
    n = len(prompts)
    labels = task.answer_candidates()
    posterior = np.zeros((n, len(labels)))
    explained = np.zeros(n, dtype=bool)
    form = taught_form(mdl.path, task.name)
    if direct is not None:
        form = (form or PRIMAL_DIRECT) if direct else ""
    if explain:
        explained[:] = True
    elif not form:
        if warn is not None:
            warn(f"{mdl.path} was not taught answer-only rows (re-run `cellduality teach` and `sft` to get them); "
                 "labelling every cell by greedy generation instead, which is much slower.")
        explained[:] = True
    else:
        posterior = rank_labels(task, mdl, answer_prompts(task, form, prompts, cells), progress=progress)
        if explain_least_confident > 0:
            least = np.argsort(posterior.max(axis=1), kind="stable")[:explain_least_confident]
            explained[least] = True
    reasoning = [""] * n
    idx = np.flatnonzero(explained)
    candidate = {task.render_answer(a): k for k, a in enumerate(labels)}
    written = np.full(n, -1)  # per cell, the index of the candidate its text answered (-1: none)
    if len(idx):
        texts = generate_sorted(mdl, [prompts[i] for i in idx], batch_size=batch_size, max_new_tokens=max_new_tokens,
                                progress=progress)
        thoughts = [extract_reasoning(t) for t in texts]
        for i, text in zip(idx, texts, strict=True):
            answer = task.parse_primal(text)
            written[i] = -1 if answer is None else candidate.get(task.render_answer(answer), -1)
        # a cell whose reasoning came out empty is ranked under the answer-only form instead
        fallback = answer_prompts(task, form or PRIMAL_DIRECT, [prompts[i] for i in idx], [cells[i] for i in idx])
        ranked = [prompts[i] if thought else fallback[j] for j, (i, thought) in enumerate(zip(idx, thoughts,
                                                                                              strict=True))]
        posterior[idx] = rank_labels(task, mdl, ranked, thoughts, progress=progress,
                                     stage="rank labels after reasoning")
        for i, thought in zip(idx, thoughts, strict=True):
            reasoning[i] = thought
    best = posterior.argmax(axis=1)
    return FastResult(
        labels=[labels[b] for b in best],
        confidence=posterior[np.arange(n), best],
        posterior=posterior,
        reasoning=reasoning,
        explained=explained,
        info={"method": "fast", "answer_only": bool(form), "answer_form": form or "",
              "explained": int(explained.sum()), "explained_unparsed": int((written[idx] < 0).sum()),
              "explained_written_differs": int(((written >= 0) & (written != best)).sum())},
        written=[labels[k] if k >= 0 else None for k in written],
    )
