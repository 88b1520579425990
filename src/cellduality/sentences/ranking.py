"""The fast core: rank the nonzero genes of every cell of a CSR matrix and join them into sentences.

Why it is fast without a per-cell loop: every nonzero entry gets one ``uint64`` sort key
``(descending float32 value bits | seeded gene rank)``. A block of rows is laid out as a
rows x (longest row) table of keys padded with the largest key, and ``ndarray.sort(axis=1)``
sorts each short row in cache with NumPy's SIMD sort: each cell's genes end up ordered by
expression (highest first) with ties broken by a seeded permutation of the genes, and the gene
index is read back from the low bits (no ``argsort``, no gather of values). Blocks hold about
``_BLOCK_NNZ`` entries, so the working memory stays far below the size of the input matrix.

Sentences are assembled as bytes: a gather from a zero-padded fixed-width table of gene names,
the padding removed with one ``bytes.replace``, then one decode and split per block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

_BLOCK_NNZ = 1 << 17  # entries ranked per block: bounds the working memory
_VALUE_BITS = 32  # values are ranked through their float32 bit pattern


def _descending_value_bits(values: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 keys whose *ascending* order is the values' descending order."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    # Standard order-preserving float -> uint transform, then invert for descending order.
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000))
    return ~ordered


def _float32_is_exact(data: np.ndarray) -> bool:
    """True when ranking through float32 cannot merge or reorder values (exact round trip)."""
    if data.dtype == np.float32 or data.dtype.kind in "iub" and data.dtype.itemsize <= 2:
        return True
    as32 = data.astype(np.float32)
    return bool(np.array_equal(as32.astype(data.dtype), data))


def tie_order(n_genes: int, seed: int) -> np.ndarray:
    """Seeded rank of each gene used to break ties between equal values (lower rank comes first)."""
    return np.random.default_rng(seed).permutation(n_genes).astype(np.int64)


class BlockRanker:
    """Ranks blocks of rows of one CSR matrix; blocks are independent, so threads can share one.

    The ranked column indices of a row are ordered highest value first, explicit zeros dropped,
    ties ordered by a permutation of the columns seeded by ``seed``, at most ``top_k`` per row.
    Each block is a rows x (longest row) table of sort keys, padded with the largest key, sorted
    along rows.
    """

    def __init__(self, matrix: sp.csr_matrix | sp.csr_array, top_k: int | None = 100, seed: int = 0) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1 or None")
        self.matrix = matrix = sp.csr_matrix(matrix)
        self.top_k = top_k
        n_genes = matrix.shape[1]
        self.order = tie_order(n_genes, seed)
        self.gene_bits = max(1, int(n_genes - 1).bit_length())
        self.exact_path = self.gene_bits > 64 - _VALUE_BITS or not _float32_is_exact(matrix.data)
        self.gene_of_order = np.argsort(self.order)
        self.order_keys = self.order.astype(np.uint64)
        self.non_negative = matrix.data.size == 0 or float(matrix.data.min()) >= 0
        self.has_zeros = matrix.data.size > 0 and not matrix.data.all()
        self.indptr = matrix.indptr.astype(np.int64)

    def bounds(self) -> list[tuple[int, int]]:
        """Row blocks of ~_BLOCK_NNZ entries, halved while padding to the longest row costs too much."""
        n_rows, indptr = self.matrix.shape[0], self.indptr
        if self.exact_path:
            return [(0, n_rows)]
        out, start = [], 0
        while start < n_rows:
            stop = int(np.searchsorted(indptr, indptr[start] + _BLOCK_NNZ, side="right")) - 1
            stop = min(max(stop, start + 1), n_rows)
            width = int(np.diff(indptr[start:stop + 1]).max(initial=0))
            while stop - start > 1 and (stop - start) * width > 4 * _BLOCK_NNZ:
                stop = start + (stop - start) // 2
                width = int(np.diff(indptr[start:stop + 1]).max(initial=0))
            out.append((start, stop))
            start = stop
        return out

    def rank(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, counts, genes)``: ``genes`` holds row ``rows[0]``'s ranked columns, then ``rows[1]``'s..."""
        rows = np.arange(start, stop)
        if self.exact_path:
            sub = self.matrix[start:stop]
            indptr, genes = _rank_csr_lexsort(sub, self.top_k, self.order)
            return rows, np.diff(indptr), genes
        indptr, top_k = self.indptr, self.top_k
        counts = np.diff(indptr[start:stop + 1])
        width = int(counts.max(initial=0))
        if width == 0:
            return rows, counts, np.zeros(0, dtype=np.intp)
        lo, hi = indptr[start], indptr[stop]
        data = self.matrix.data[lo:hi]
        gene_bits = self.gene_bits
        padding = np.uint64(2**64 - 1)
        if self.non_negative:  # float bits of x >= 0 grow with x; flip them for descending order
            vbits = ~np.ascontiguousarray(data, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)
        else:
            vbits = _descending_value_bits(data)
        keys = vbits.astype(np.uint64) << np.uint64(gene_bits)
        keys |= self.order_keys[self.matrix.indices[lo:hi]]
        local = np.repeat(np.arange(rows.size), counts)
        kept = counts
        if self.has_zeros:
            zero = data == 0
            if zero.any():  # explicit zeros become padding and are cut below
                keys[zero] = padding
                kept = counts - np.bincount(local[zero], minlength=rows.size)
        table = np.full(rows.size * width, padding, dtype=np.uint64)
        table[np.arange(hi - lo) + (local * width - (indptr[start:stop] - lo)[local])] = keys
        table = table.reshape(rows.size, width)
        table.sort(axis=1)  # many short rows: small in-cache SIMD sorts
        if top_k is not None:
            kept = np.minimum(kept, top_k)
            table = table[:, :top_k]
        ranked = table[np.arange(table.shape[1])[None, :] < kept[:, None]]
        return rows, kept, self.gene_of_order[(ranked & np.uint64((1 << gene_bits) - 1)).astype(np.intp)]


def ranked_blocks(matrix: sp.csr_matrix | sp.csr_array, top_k: int | None = 100, seed: int = 0
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(rows, counts, genes)`` for consecutive blocks of rows covering every row once."""
    ranker = BlockRanker(matrix, top_k, seed)
    for start, stop in ranker.bounds():
        yield ranker.rank(start, stop)


def rank_csr(matrix: sp.csr_matrix | sp.csr_array, top_k: int | None = 100, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rank each row's nonzero entries, highest value first, keeping at most ``top_k`` per row.

    Returns ``(indptr, genes)``: the ranked column indices of row ``i`` are
    ``genes[indptr[i]:indptr[i + 1]]`` (see :func:`ranked_blocks` for the ordering rules).
    """
    blocks = list(ranked_blocks(matrix, top_k, seed))
    counts = np.zeros(matrix.shape[0], dtype=np.int64)
    for rows, kept, _ in blocks:
        counts[rows] = kept
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    genes = np.empty(int(indptr[-1]), dtype=np.intp)
    for rows, kept, ranked in blocks:
        first = np.cumsum(kept) - kept
        local = np.repeat(np.arange(rows.size), kept)
        genes[indptr[rows][local] + np.arange(ranked.size) - first[local]] = ranked
    return indptr, genes


def _rank_csr_lexsort(matrix: sp.csr_matrix, top_k: int | None, order: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact fallback for values float32 cannot hold exactly (or huge gene counts): one lexsort."""
    matrix = matrix.copy()
    matrix.eliminate_zeros()
    counts = np.diff(matrix.indptr).astype(np.int64)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    perm = np.lexsort((order[matrix.indices], -matrix.data, rows))
    genes = matrix.indices[perm].astype(np.int64)
    if top_k is not None:
        row_start = np.repeat(np.cumsum(counts) - counts, counts)
        genes = genes[(np.arange(genes.size) - row_start) < top_k]
        counts = np.minimum(counts, top_k)
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, genes


class SentenceJoiner:
    """Turns ranked gene indices into space-separated sentences with NumPy byte gathers.

    Each name (plus a trailing space) sits in a zero-padded row of a fixed-width byte table;
    gathering rows of the table and dropping the padding bytes yields the text of many
    sentences at once, which is decoded and split into lines once per block.
    """

    def __init__(self, names: Sequence[str]) -> None:
        encoded = [str(n).encode("utf-8") + b" " for n in names]
        if any(b" " in e[:-1] or b"\n" in e or b"\0" in e for e in encoded):
            raise ValueError("gene names must not contain spaces, newlines or NUL bytes")
        self._lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        width = int(self._lengths.max(initial=1))
        self._table = np.zeros((len(encoded), width), dtype=np.uint8)
        for i, e in enumerate(encoded):
            self._table[i, :len(e)] = np.frombuffer(e, dtype=np.uint8)

    def join_block(self, counts: np.ndarray, genes: np.ndarray) -> list[str]:
        """Sentences of consecutive rows with ``counts[i]`` ranked genes each (``""`` when 0)."""
        if genes.size == 0:
            return [""] * counts.size
        block = np.take(self._table, genes, axis=0)
        last = np.cumsum(counts)[counts > 0] - 1
        block[last, self._lengths[genes[last]] - 1] = ord("\n")  # a row's last space ends its line
        lines = block.tobytes().replace(b"\0", b"").decode("utf-8").split("\n")[:-1]
        if counts.min() > 0:
            return lines
        out = np.full(counts.size, "", dtype=object)
        out[counts > 0] = lines
        return out.tolist()

    def join(self, indptr: np.ndarray, genes: np.ndarray, block_rows: int = 256) -> list[str]:
        """One sentence per row of ``(indptr, genes)``; rows without genes become ``""``."""
        n_rows = indptr.size - 1
        out: list[str] = []
        for start in range(0, n_rows, block_rows):
            stop = min(start + block_rows, n_rows)
            out.extend(self.join_block(np.diff(indptr[start:stop + 1]), genes[indptr[start]:indptr[stop]]))
        return out
