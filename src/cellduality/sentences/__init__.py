"""Single cells -> cell sentences (and back): the paper's §3.1.

A cell sentence is the cell's expressed gene symbols in descending order of expression, top-K.

* :func:`to_sentences` -- the fast vectorised core (AnnData -> ``list[str]``);
* :func:`build_cell_sentences` / :class:`CellSentenceDataset` -- the saved folder other stages read
  (sentences + kept ``.obs`` columns, vocabulary, inverse model, splits);
* :class:`InverseModel` -- sentence -> expression.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cellduality.datasets.loaders import read_h5ad
from cellduality.sentences.dataset import CellSentenceDataset, build_cell_sentences
from cellduality.sentences.genes import resolve_symbols
from cellduality.sentences.inverse import InverseModel
from cellduality.sentences.normalize import choose_input
from cellduality.sentences.ranking import BlockRanker, SentenceJoiner, rank_csr

__all__ = ["CellSentenceDataset", "InverseModel", "build_cell_sentences", "rank_csr", "ranked_genes", "read_h5ad",
           "to_sentences"]


def to_sentences(adata, top_k: int | None = 100, seed: int = 0, *, layer: str | None = None,
                 use_raw: bool | None = None, expression: str = "auto", gene_id_column: str | None = None,
                 gene_map: str | Path | None = None, orthologs: str | Path | None = None,
                 threads: int | None = None) -> list[str]:
    """One sentence per cell, in cell order: its top-``top_k`` nonzero genes, most expressed first.

    ``top_k=None`` keeps every nonzero gene. Ties are broken by a permutation seeded by ``seed``.
    All-zero cells give ``""`` (``build_cell_sentences`` drops them instead). ``threads > 1`` ranks and
    joins blocks of cells in parallel (NumPy's sorts and gathers release the GIL) with the same
    result; the default is 1 because two threads measured no faster on the shared 2-core machine.
    """
    matrix, symbols = _symbol_matrix(adata, layer=layer, use_raw=use_raw, expression=expression,
                                     gene_id_column=gene_id_column, gene_map=gene_map, orthologs=orthologs)
    joiner = SentenceJoiner(symbols)
    ranker = BlockRanker(matrix, top_k, seed)

    def block(bounds: tuple[int, int]) -> list[str]:
        _, counts, genes = ranker.rank(*bounds)
        return joiner.join_block(counts, genes)

    threads = threads or 1
    out: list[str] = []
    if threads == 1:
        for bounds in ranker.bounds():
            out.extend(block(bounds))
        return out
    with ThreadPoolExecutor(threads) as pool:  # map keeps block order
        for lines in pool.map(block, ranker.bounds()):
            out.extend(lines)
    return out


def ranked_genes(adata, top_k: int | None = 100, seed: int = 0, **input_options) -> tuple[list[str], np.ndarray,
                                                                                        np.ndarray]:
    """``(symbols, indptr, genes)``: cell ``i``'s ranked genes are ``symbols[g]`` for ``g`` in
    ``genes[indptr[i]:indptr[i + 1]]``, in the order and with the ties of :func:`to_sentences`.

    For callers that filter or cut the ranking further (inference keeps a model's gene panel): on
    indices that costs a fraction of building, splitting and filtering the text of every sentence.
    ``input_options`` are :func:`to_sentences`' keyword options (``layer``, ``gene_map``, ...).
    """
    matrix, symbols = _symbol_matrix(adata, **input_options)
    indptr, genes = rank_csr(matrix, top_k, seed)
    return symbols, indptr, genes


def _symbol_matrix(adata, *, layer: str | None = None, use_raw: bool | None = None, expression: str = "auto",
                   gene_id_column: str | None = None, gene_map: str | Path | None = None,
                   orthologs: str | Path | None = None, threads: int | None = None) -> tuple[object, list[str]]:
    """The expression matrix to rank and its columns' gene symbols (columns without one dropped)."""
    del threads  # a to_sentences option that does not change what is ranked
    chosen = choose_input(adata, layer=layer, use_raw=use_raw, expression=expression)
    names = resolve_symbols(chosen.var_names, chosen.var, gene_id_column=gene_id_column,
                            gene_map=gene_map, orthologs=orthologs)
    matrix = chosen.matrix if names.keep.all() else chosen.matrix[:, np.flatnonzero(names.keep)]
    return matrix, [s for s, k in zip(names.symbols, names.keep, strict=True) if k]
