"""Copy-aware decoding of rank claims: ``GENE (rank N`` gets N from the input cell, not from the model.

A small model explains its answer in the teacher's words -- ``AIF1 (rank 3; in 96% of CD14+
Monocyte training cells …)`` -- but copies the rank badly: on the quickstart model only a quarter
of its rank claims were exact (docs/results.md, issue #13). The rank is a fact of the prompt, so
decoding can copy it: when the text generated so far ends with ``GENE (rank`` or ``GENE at rank``
and ``GENE`` is in the input cell, the next tokens are forced to spell the gene's rank in that
cell.

Where a task's reasoning cites only genes of its input cell (``Task.cites_input_genes_only``:
annotation, sensitivity), gene tokens that are not in the cell are also barred from the
reasoning: on the quickstart model most false claims were a marker *absent* from the cell (IL32
for a T cell). Tokens of the candidate labels stay allowed (``CD14`` in "CD14+ Monocyte"). The
choice of which of the cell's genes to cite stays the model's. Given the teacher's training
frequencies, a claim about them (``among X training cells 96%, among others 7%``, the teacher's
label-first phrasing) gets its numbers copied too, for the label the model chose to cite.

For classification tasks the ``<answer>`` copies the label the reasoning concluded with (``So the
cell is most consistent with X``), when it concluded with one: an explanation whose conclusion
contradicts its answer explains nothing. Without such a conclusion the answer is the model's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cellduality.faithfulness import cell_ranks, concluded_label
from cellduality.models.tokenizer import single_token_ids

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class InputCell:
    """What copy-aware decoding reads from a prompt: its input cell (ranked), whether the reasoning
    may cite only that cell's genes, and the candidate labels when the answer is one of them."""

    genes: Sequence[str]
    cite_only_these: bool = False
    labels: Sequence[str] = ()
    frequency: Callable[[str, str], tuple[float, float]] | None = None
    """``(gene, label) -> (share of label's training cells with gene, share of the others)``: the
    teacher's fitted frequencies, so that stated ones can be copied (None: left to the model)."""


CellOf = Callable[[str], InputCell | None]
"""``raw prompt -> its input cell`` (``None``: leave the row alone)."""

_RANK_CUE = re.compile(  # "GENE (rank", "GENE at rank", and "GENE at rank N (rank" (the rank restated)
    r"(?P<gene>[A-Za-z0-9][A-Za-z0-9.\-]*)(?:\s+at\s+rank\s+\d+)?\s*(?:\(\s*|\s+at\s+)rank\s*$")
_TAIL_TOKENS = 10  # enough to hold "GENE at rank N (rank" for a tokenizer that keeps a symbol whole
_CLAIM_OPEN = r"(?P<gene>[A-Za-z0-9][A-Za-z0-9.\-]*)\s*(?:\(\s*rank\s+\d+\s*;|at\s+rank\s+\d+\s*\()\s*"
_LABEL_CELLS = r"(?:among|in)\s+(?:the\s+)?(?P<label>[^();%]+?)\s+(?:training\s+)?cells"
_FREQ_INSIDE_CUE = re.compile(_CLAIM_OPEN + _LABEL_CELLS + r"$")  # "... among X training cells" -> " 96%"
_FREQ_OUTSIDE_CUE = re.compile(_CLAIM_OPEN + _LABEL_CELLS + r"\s+\d+\s*%\s*,\s*(?:among\s+(?:the\s+)?others|elsewhere)$")
_CLAIM_TAIL_TOKENS = 40


class CopyRanks:
    """A logits processor: stated ranks copied from the input cell, the answer from the conclusion.

    :meth:`reset` it with one :class:`InputCell` (or ``None``) per batch row before each
    ``model.generate``; :func:`~cellduality.models.generation.make_generate_fn` does it from the
    prompts with its ``cell_of`` argument. ``forced`` counts the ranks it copied,
    ``answers_copied`` the answers.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, genes: Iterable[str] = (),
                 labels: Iterable[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.gene_ids: dict[str, set[int]] = {}
        for gene in genes:
            if ids := set(single_token_ids(tokenizer, gene)):
                self.gene_ids[gene] = ids
        label_ids = {i for label in labels for i in tokenizer.encode(f" {label}", add_special_tokens=False)}
        self._gene_tokens = sorted({i for ids in self.gene_ids.values() for i in ids} - label_ids)
        self.rank_ids = set(single_token_ids(tokenizer, "rank"))
        cue_words = ("cells", "others", "elsewhere")  # a frequency is copied right after one of these
        self.frequency_cue_ids = {i for i in range(len(tokenizer)) if (piece := tokenizer.decode([i]).strip())
                                  and any(w.endswith(piece) for w in cue_words)}  # also the last piece of a split word
        self.frequencies_copied = 0
        self.answer_ids = set(single_token_ids(tokenizer, "<answer>"))
        self.forced = 0
        self.answers_copied = 0
        self._inputs: list[InputCell | None] = []
        self._ranks: list[dict[str, int] | None] = []
        self._barred: Any = None
        self._queue: list[list[int]] = []
        self._in_answer: list[bool] = []
        self._generated: list[list[int]] = []
        self._start: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.rank_ids)

    def reset(self, cells: Sequence[InputCell | None]) -> None:
        """A new batch: what to copy for each row (``None`` = leave the row alone)."""
        import torch

        self._inputs = list(cells)
        self._ranks = [cell_ranks(c.genes) if c and c.genes else None for c in cells]
        self._barred = None  # [rows, vocab] True where a gene may not be cited (rows that cite only their cell)
        restricted = [i for i, c in enumerate(cells) if c is not None and c.cite_only_these]
        if restricted and self._gene_tokens:
            self._barred = torch.zeros(len(cells), len(self.tokenizer), dtype=torch.bool)
            self._barred[torch.tensor(restricted)[:, None], torch.tensor(self._gene_tokens)[None, :]] = True
            for i in restricted:
                allowed = [t for g in cells[i].genes for t in self.gene_ids.get(g, ())]
                if allowed:
                    self._barred[i, allowed] = False
        self._queue = [[] for _ in cells]
        self._in_answer = [False for _ in cells]
        self._generated = [[] for _ in cells]
        self._start = None

    def _answer_tokens(self, label: str) -> list[int]:
        """Tokens after ``<answer>`` that spell `` label </answer>``, as the answer is written in training."""
        opened = self.tokenizer.encode("<answer>", add_special_tokens=False)
        full = self.tokenizer.encode(f"<answer> {label} </answer>", add_special_tokens=False)
        return full[len(opened):] if full[: len(opened)] == opened else []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        first = self._start is None
        if first:
            self._start = input_ids.shape[1]
            if self._barred is not None:  # once per batch, not once per step
                self._barred = self._barred[: scores.shape[0]].to(scores.device)
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            cell = self._inputs[row] if row < len(self._inputs) else None
            if cell is None:
                continue
            if not first:  # one new token per step: the state follows incrementally
                self._generated[row].append(token)
            if not self._queue[row]:
                self._plan(row, token, cell)
        if self._barred is not None:  # reasoning rows may cite only their cell's genes (and label words)
            reasoning = torch.tensor([not a for a in self._in_answer], device=scores.device)[:, None]
            scores.masked_fill_(self._barred & reasoning, float("-inf"))
        for row, queue in enumerate(self._queue):
            if queue:
                keep = queue.pop(0)
                value = scores[row, keep].clone()
                scores[row, :] = float("-inf")
                scores[row, keep] = value if value > float("-inf") else 0.0
        return scores

    def _plan(self, row: int, token: int, cell: InputCell) -> None:
        """Queue what to copy next in ``row``, from the text generated so far."""
        ids = self._generated[row]
        if self._in_answer[row]:
            return
        if token in self.answer_ids and ids:  # the answer opens: copy the conclusion, once
            self._in_answer[row] = True
            label = _concluded(self.tokenizer.decode(ids, skip_special_tokens=True), cell.labels) if cell.labels else None
            if label is not None and (tokens := self._answer_tokens(label)):
                self._queue[row] = tokens
                self.answers_copied += 1
            return
        if cell.frequency is not None and token in self.frequency_cue_ids and cell.labels:
            self._plan_frequency(row, cell, ids)
            return
        ranks = self._ranks[row]
        if ranks and token in self.rank_ids and ids:
            tail = self.tokenizer.decode(ids[-_TAIL_TOKENS:], skip_special_tokens=True)
            found = _RANK_CUE.search(tail)
            if found and found.group("gene") in ranks:
                self._queue[row] = self.tokenizer.encode(f" {ranks[found.group('gene')]}", add_special_tokens=False)
                self.forced += 1

    def _plan_frequency(self, row: int, cell: InputCell, ids: list[int]) -> None:
        """``among X training cells`` -> the share of X's training cells with the gene; ``among others`` -> the rest."""
        tail = self.tokenizer.decode(ids[-_CLAIM_TAIL_TOKENS:], skip_special_tokens=True)
        for cue, which in ((_FREQ_INSIDE_CUE, 0), (_FREQ_OUTSIDE_CUE, 1)):
            found = cue.search(tail)
            if found is None:
                continue
            label = next((x for x in cell.labels if x.casefold() == found.group("label").strip().casefold()), None)
            if label is None or cell.frequency is None:
                return
            share = cell.frequency(found.group("gene"), label)[which]
            # the number only: tokenizers trained on the teacher's text merge "%" with what follows ("%,")
            self._queue[row] = self.tokenizer.encode(f" {100 * share:.0f}", add_special_tokens=False)
            self.frequencies_copied += 1
            return


def _concluded(text: str, labels: Sequence[str]) -> str | None:
    reasoning = text.split("</think>")[0]
    return concluded_label(reasoning, labels)
