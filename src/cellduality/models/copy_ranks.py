"""Copy-aware decoding of rank claims: ``GENE (rank N`` gets N from the input cell, not from the model.

A small model explains its answer in the teacher's words -- ``AIF1 (rank 3; in 96% of CD14+
Monocyte training cells …)`` -- but copies the rank badly: on the quickstart model only a quarter
of its rank claims were exact (docs/results.md, issue #13). The rank is a fact of the prompt, so
decoding can copy it: when the text generated so far ends with ``GENE (rank`` or ``GENE at rank``
and ``GENE`` is in the input cell, the next tokens are forced to spell the gene's rank in that
cell. Only the reasoning is touched (never inside ``<answer>``).

Where a task's reasoning cites only genes of its input cell (``Task.cites_input_genes_only``:
annotation, sensitivity), gene tokens that are not in the cell are also barred from the
reasoning: on the quickstart model most false claims were a marker *absent* from the cell (IL32
for a T cell). Tokens of the candidate labels stay allowed (``CD14`` in "CD14+ Monocyte"). The
answer and which of the cell's genes to cite stay the model's choice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

@dataclass(frozen=True)
class InputCell:
    """The input cell of a prompt, ranked, and whether the reasoning may cite only its genes."""

    genes: Sequence[str]
    cite_only_these: bool = False


CellOf = Callable[[str], InputCell | None]
"""``raw prompt -> its input cell`` (``None``: leave the row alone)."""

_RANK_CUE = re.compile(  # "GENE (rank", "GENE at rank", and "GENE at rank N (rank" (the rank restated)
    r"(?P<gene>[A-Za-z0-9][A-Za-z0-9.\-]*)(?:\s+at\s+rank\s+\d+)?\s*(?:\(\s*|\s+at\s+)rank\s*$")
_TAIL_TOKENS = 10  # enough to hold "GENE at rank N (rank" for a tokenizer that keeps a symbol whole


def _one_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> set[int]:
    """Ids of the one-token spellings of ``text``, bare and space-prefixed."""
    ids = (tokenizer.encode(variant, add_special_tokens=False) for variant in (text, f" {text}"))
    return {found[0] for found in ids if len(found) == 1}


class CopyRanks:
    """A logits processor forcing the stated rank of a cited gene to its rank in the input cell.

    Set :attr:`cells` (one ranked gene list or ``None`` per batch row) before each
    ``model.generate``; :func:`~cellduality.models.generation.make_generate_fn` does it from the
    prompts with its ``cell_of`` argument. ``forced`` counts the ranks it wrote.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, genes: Iterable[str] = (),
                 labels: Iterable[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.gene_ids: dict[str, set[int]] = {}
        for gene in genes:
            if ids := _one_token_ids(tokenizer, gene):
                self.gene_ids[gene] = ids
        label_ids = {i for label in labels for i in tokenizer.encode(f" {label}", add_special_tokens=False)}
        self._gene_tokens = sorted({i for ids in self.gene_ids.values() for i in ids} - label_ids)
        self.rank_ids = _one_token_ids(tokenizer, "rank")
        self.answer_ids = _one_token_ids(tokenizer, "<answer>")
        self.cells: list[dict[str, int] | None] = []
        self._barred: list[Any] = []
        self.forced = 0
        self._queue: list[list[int]] = []
        self._start: int | None = None

    @property
    def active(self) -> bool:
        return bool(self.rank_ids)

    def reset(self, cells: Sequence[InputCell | None]) -> None:
        """A new batch: the input cell of each row (``None`` = leave the row alone)."""
        import torch

        self.cells = [None if not c or not c.genes else {g: r for r, g in reversed(list(enumerate(c.genes, 1)))}
                      for c in cells]
        self._barred = []
        for cell in cells:
            allowed = {i for g in (cell.genes if cell and cell.cite_only_these else ()) for i in self.gene_ids.get(g, ())}
            barred = [i for i in self._gene_tokens if i not in allowed] if cell and cell.cite_only_these else []
            self._barred.append(torch.tensor(barred, dtype=torch.long) if barred else None)
        self._queue = [[] for _ in cells]
        self._start = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._start is None:
            self._start = input_ids.shape[1]
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            cell = self.cells[row] if row < len(self.cells) else None
            if cell is None:
                continue
            generated = input_ids[row, self._start:]
            if any(int(t) in self.answer_ids for t in generated.tolist()):
                continue  # inside or after the answer: not reasoning any more
            if self._barred[row] is not None:
                scores[row, self._barred[row].to(scores.device)] = float("-inf")
            if not self._queue[row] and token in self.rank_ids and input_ids.shape[1] > self._start:
                tail = self.tokenizer.decode(generated[-_TAIL_TOKENS:], skip_special_tokens=True)
                found = _RANK_CUE.search(tail)
                if found and found.group("gene") in cell:
                    self._queue[row] = self.tokenizer.encode(f" {cell[found.group('gene')]}", add_special_tokens=False)
                    self.forced += 1
            if self._queue[row]:
                keep = self._queue[row].pop(0)
                value = scores[row, keep].clone()
                scores[row, :] = float("-inf")
                scores[row, keep] = value if value > float("-inf") else 0.0
        return scores
