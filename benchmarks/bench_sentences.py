"""Cells/s of AnnData -> full-length cell sentences: ours vs a naive per-cell loop vs cell2sentence.

    python benchmarks/bench_sentences.py [--cells 100000] [--genes 2000] [--density 0.1]

All methods convert the same CSR matrix (random counts, ~density nonzero) into full-length
sentences (every nonzero gene, most expressed first). cell2sentence's ``generate_sentences`` is
timed when the package imports (its tqdm bar goes to stderr), on at most ``--c2s-cells`` cells (it is a per-cell loop, so its
rate does not depend on the number of cells). Peak memory is measured with tracemalloc (NumPy
reports its buffers to it) and compared to the input matrix (data + indices + indptr).
Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import scipy.sparse as sp


def make_matrix(n_cells: int, n_genes: int, density: float, seed: int = 0) -> sp.csr_matrix:
    """Random counts (geometric, many ties like real UMIs) at the requested density, float32 CSR."""
    rng = np.random.default_rng(seed)
    per_row = rng.binomial(n_genes, density, n_cells)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(per_row, out=indptr[1:])
    # distinct columns per row: sort random keys per row and take the first k (vectorised)
    indices = np.empty(indptr[-1], dtype=np.int32)
    block = 5000
    for start in range(0, n_cells, block):
        stop = min(start + block, n_cells)
        keys = rng.random((stop - start, n_genes), dtype=np.float32)
        order = np.argsort(keys, axis=1)
        take = np.arange(n_genes)[None, :] < per_row[start:stop, None]
        indices[indptr[start]:indptr[stop]] = order[take]
    data = rng.geometric(0.3, indptr[-1]).astype(np.float32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    matrix.sort_indices()
    return matrix


def naive(adata) -> list[str]:
    """The obvious per-cell loop (argsort each row), with the same seeded tie order as ours."""
    from cellduality.sentences.ranking import tie_order

    mat = adata.X
    names = np.asarray(adata.var_names)
    order = tie_order(mat.shape[1], 0)
    out = []
    for i in range(mat.shape[0]):
        cols = mat.indices[mat.indptr[i]:mat.indptr[i + 1]]
        vals = mat.data[mat.indptr[i]:mat.indptr[i + 1]]
        ranked = cols[np.lexsort((order[cols], -vals))]
        out.append(" ".join(names[ranked]))
    return out


def timed(fn, *args):
    """Wall time without tracing (tracemalloc would slow Python-heavy loops far more than NumPy)."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def traced(fn, *args) -> tuple[int, int]:
    """(peak, still allocated at the end) bytes seen by tracemalloc during ``fn(*args)``."""
    tracemalloc.start()
    result = fn(*args)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak, current


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--naive-cells", type=int, default=20_000)
    parser.add_argument("--c2s-cells", type=int, default=20_000)
    args = parser.parse_args()

    import anndata as ad

    from cellduality.sentences import to_sentences

    matrix = make_matrix(args.cells, args.genes, args.density)
    names = [f"GENE{i}" for i in range(args.genes)]
    adata = ad.AnnData(matrix)
    adata.var_names = names
    input_bytes = matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
    print(f"matrix: {args.cells:,} cells x {args.genes:,} genes, {matrix.nnz:,} nonzero "
          f"({matrix.nnz / args.cells / args.genes:.1%}), {input_bytes / 2**20:.0f} MiB")

    ours, seconds = timed(to_sentences, adata, None, 0)
    rate = args.cells / seconds
    peak, kept = traced(to_sentences, adata, None, 0)
    print(f"cellduality.to_sentences: {seconds:.2f} s, {rate:,.0f} cells/s; peak traced memory "
          f"{peak / 2**20:.0f} MiB = {peak / input_bytes:.2f}x input, of which the returned sentences "
          f"{kept / 2**20:.0f} MiB and working memory {(peak - kept) / 2**20:.0f} MiB "
          f"= {(peak - kept) / input_bytes:.2f}x input")

    sub = adata[: args.naive_cells].copy()
    slow, seconds = timed(naive, sub)
    naive_rate = sub.n_obs / seconds
    assert slow == ours[: sub.n_obs], "naive loop and to_sentences disagree"
    print(f"naive per-cell loop:      {naive_rate:,.0f} cells/s on {sub.n_obs:,} cells "
          f"(identical sentences) -> ours is {rate / naive_rate:.1f}x")

    try:
        from cell2sentence.utils import generate_sentences, generate_vocabulary
    except ImportError as exc:
        print(f"cell2sentence: not installed ({exc}); skipped")
        return
    sub = adata[: args.c2s_cells].copy()
    vocab = generate_vocabulary(sub)
    theirs, seconds = timed(generate_sentences, sub, vocab)
    c2s_rate = sub.n_obs / seconds
    same_sets = all(set(a.split()) == set(b.split()) for a, b in zip(theirs, ours, strict=False))
    print(f"cell2sentence 1.2.0 generate_sentences: {c2s_rate:,.0f} cells/s on {sub.n_obs:,} cells "
          f"(same gene sets: {same_sets}) -> ours is {rate / c2s_rate:.1f}x")


if __name__ == "__main__":
    main()
