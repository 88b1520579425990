"""Text helpers every task shares: parsing gene lists and labels, choosing paraphrases, seeds.

Parsers are forgiving about form (case, whitespace, commas, numbering, the ``<answer>`` tags'
spacing) and strict about content: a label outside the candidate set or a gene list with no known
gene is malformed (``None``). None of them raises on arbitrary text.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from cellduality.errors import CellDualityError
from cellduality.tasks.base import extract_answer

MAX_PARSED_GENES = 512
"""Gene lists longer than this are cut when parsed (bounds the cost of scoring one answer)."""

_GENE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/@]*")
_SYMBOL_LIKE = re.compile(r"^[A-Z0-9][A-Z0-9.\-]*$")
_LABEL_STRIP = " \t\n\r.,;:!?\"'`*()[]{}"


def stable_seed(*parts: Any) -> int:
    """A seed that depends only on ``parts`` (not on Python's salted ``hash``)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode()) & 0x7FFFFFFF


def rng_for(seed: int, purpose: str) -> random.Random:
    """An independent random stream per (example seed, purpose): prompt choice, split, pairing."""
    return random.Random(stable_seed(seed, purpose))


def choose(templates: Sequence[str], seed: int, purpose: str) -> str:
    """The paraphrase of ``templates`` that ``seed`` selects for ``purpose``."""
    return templates[rng_for(seed, purpose).randrange(len(templates))]


def genes_of(sentence: str | Sequence[str], max_genes: int | None = None) -> list[str]:
    """The first ``max_genes`` genes of a cell sentence (string or list)."""
    genes = sentence.split() if isinstance(sentence, str) else list(sentence)
    return genes[:max_genes] if max_genes else genes


def render_genes(genes: Iterable[str]) -> str:
    return " ".join(genes)


def parse_genes(text: Any, vocabulary: Iterable[str] | frozenset[str] = frozenset()) -> list[str] | None:
    """Gene symbols of an ``<answer>`` block, in order, first occurrence only; ``None`` if none.

    Tokens are upper-cased and must be in ``vocabulary`` (when it is non-empty) or look like a
    gene symbol; anything else (words, the label written as a gene) is dropped. A list with no
    known gene is malformed.
    """
    content = extract_answer(text)
    if content is None:
        return None
    vocab = vocabulary if isinstance(vocabulary, (set, frozenset)) else frozenset(vocabulary)
    genes: list[str] = []
    seen: set[str] = set()
    for token in _GENE_TOKEN.findall(content):
        gene = token.upper().rstrip(".-")
        if not gene or gene in seen:
            continue
        if (vocab and gene not in vocab) or (not vocab and not _SYMBOL_LIKE.match(gene)):
            continue
        seen.add(gene)
        genes.append(gene)
        if len(genes) >= MAX_PARSED_GENES:
            break
    return genes or None


def normalise_label(text: str) -> str:
    return " ".join(text.casefold().split()).strip(_LABEL_STRIP)


def parse_label(text: Any, labels: Sequence[str]) -> str | None:
    """The candidate label named in the ``<answer>`` block, or ``None``.

    Case, surrounding whitespace/punctuation and a leading ``cell type:``-style prefix are
    forgiven; the rest must equal one candidate exactly (no partial or hedged matches). With an
    empty candidate set any short non-empty answer is accepted as-is.
    """
    content = extract_answer(text)
    if content is None:
        return None
    wanted = normalise_label(content)
    if ":" in wanted and wanted not in {normalise_label(label) for label in labels}:
        wanted = normalise_label(wanted.rsplit(":", 1)[1])
    if not labels:
        return content if 0 < len(content) <= 100 else None
    for label in labels:
        if normalise_label(label) == wanted:
            return label
    return None


def cell_id(cells: Any, index: int) -> str:
    """A cell's id: the ``cell_id`` column of the sentences when present, else the obs index."""
    obs = cells.obs
    return str(obs["cell_id"].iloc[index]) if "cell_id" in obs.columns else str(obs.index[index])


def require_column(obs: Any, column: str | None, task: str, option: str) -> str:
    """Fail with one line when the sentence data lacks the column ``task`` needs."""
    if not column:
        raise CellDualityError(
            f"Task '{task}' needs a label column but none was recorded; pass {option} with an .obs column."
        )
    if column not in obs.columns:
        available = ", ".join(map(str, obs.columns)) or "none"
        raise CellDualityError(
            f"Task '{task}' needs column '{column}' which the cell sentences lack (available: {available}); "
            f"re-run `cellduality sentences` keeping it or pass {option}."
        )
    return column


def format_choices(choices: Sequence[str]) -> str:
    return ", ".join(choices)
