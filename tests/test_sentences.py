"""Cell sentences: ranks vs an independent computation, ties, normalisation choice, inverse, folder."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.sentences import (
    CellSentenceDataset,
    InverseModel,
    build_cell_sentences,
    rank_csr,
    to_sentences,
)
from cellduality.sentences.normalize import choose_input


def independent_sentences(dense: np.ndarray, names: list[str], top_k: int | None, seed: int) -> list[str]:
    """Per-cell reference: sort nonzero genes by (-value, seeded tie rank) with Python's sorted()."""
    tie = np.random.default_rng(seed).permutation(dense.shape[1])
    out = []
    for row in dense:
        nz = [j for j in range(row.size) if row[j] != 0]
        ranked = sorted(nz, key=lambda j: (-float(row[j]), int(tie[j])))
        out.append(" ".join(names[j].upper() for j in ranked[:top_k]))
    return out


def make_adata(dense: np.ndarray, names: list[str] | None = None, **obs) -> ad.AnnData:
    names = names or [f"gene{j}" for j in range(dense.shape[1])]
    frame = pd.DataFrame(obs, index=[f"c{i}" for i in range(dense.shape[0])]) if obs else None
    adata = ad.AnnData(sp.csr_matrix(dense.astype(np.float32)), obs=frame)
    adata.var_names = names
    return adata


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 25), st.sampled_from([None, 1, 3, 10]), st.integers(0, 3),
       st.booleans(), st.integers(0, 10_000))
def test_ranks_match_an_independent_computation(n_cells, n_genes, top_k, seed, negative, data_seed):
    rng = np.random.default_rng(data_seed)
    dense = rng.integers(0, 4, (n_cells, n_genes)).astype(np.float32)  # small ints: many ties
    dense[rng.random(dense.shape) < 0.4] = 0
    if negative:
        dense = dense - 1.5 * (rng.random(dense.shape) < 0.3)
    names = [f"g{j}" for j in range(n_genes)]
    got = to_sentences(make_adata(dense, names), top_k=top_k, seed=seed, expression="scaled" if negative else "auto")
    assert got == independent_sentences(dense, names, top_k, seed)


def test_zeros_never_enter_and_explicit_zeros_are_ignored():
    matrix = sp.csr_matrix(np.array([[0, 2, 1], [3, 0, 0]], dtype=np.float32))
    matrix.data[matrix.data == 1] = 0  # an explicit stored zero
    adata = ad.AnnData(matrix)
    adata.var_names = ["a", "b", "c"]
    assert to_sentences(adata, top_k=None) == ["B", "A"]


def test_ties_are_deterministic_per_seed_and_differ_across_seeds():
    adata = make_adata(np.ones((4, 30), dtype=np.float32))
    first = to_sentences(adata, top_k=None, seed=1)
    assert first == to_sentences(adata, top_k=None, seed=1)
    assert len(set(first)) == 1  # same tie order in every cell
    assert first != to_sentences(adata, top_k=None, seed=2)


def test_float64_values_float32_cannot_hold_use_the_exact_path():
    dense = np.array([[1.0, 1.0 + 1e-12, 0.5]])
    adata = ad.AnnData(sp.csr_matrix(dense))
    adata.var_names = ["a", "b", "c"]
    assert to_sentences(adata, top_k=None) == ["B A C"]
    indptr, genes = rank_csr(sp.csr_matrix(dense), top_k=2)
    assert indptr.tolist() == [0, 2] and genes.tolist() == [1, 0]


def test_rows_of_very_different_sizes_and_empty_rows():
    rng = np.random.default_rng(0)
    dense = np.zeros((50, 300), dtype=np.float32)
    for i in range(50):
        k = [0, 1, 5, 299, 150][i % 5]
        dense[i, rng.choice(300, k, replace=False)] = rng.random(k) + 0.1
    names = [f"g{j}" for j in range(300)]
    assert to_sentences(make_adata(dense, names), top_k=None) == independent_sentences(dense, names, None, 0)


def test_pbmc_raw_is_chosen_and_matches_the_reference(pbmc_small):
    chosen = choose_input(pbmc_small)
    assert chosen.source == ".raw" and chosen.kind == "log1p"
    got = to_sentences(pbmc_small, top_k=20)
    ref = independent_sentences(pbmc_small.raw.X.toarray()[:25], list(pbmc_small.raw.var_names), 20, 0)
    assert got[:25] == ref


def test_counts_are_normalised_and_tpm_scaled_ranked_as_is():
    counts = make_adata(np.array([[3, 0, 1], [0, 5, 5]]))
    assert choose_input(counts).kind == "counts"
    assert "normalised to 1e4" in choose_input(counts).description
    assert choose_input(make_adata(np.array([[3.5, 0, 1.25]]))).kind == "log1p"
    assert choose_input(make_adata(np.array([[350.5, 0, 1.25]]))).kind == "tpm"
    assert choose_input(make_adata(np.array([[-0.5, 0, 1.25]]))).kind == "scaled"
    layered = make_adata(np.array([[1.5, 0, 2.5]]))
    layered.layers["counts"] = sp.csr_matrix(np.array([[0, 7, 2]], dtype=np.float32))
    assert to_sentences(layered, layer="counts", top_k=None) == ["GENE1 GENE2"]
    assert to_sentences(layered, use_raw=False, top_k=None) == ["GENE2 GENE0"]


def test_build_and_reload_pbmc(pbmc_small, tmp_path):
    cells = build_cell_sentences(pbmc_small, top_k=50, label_keys=["bulk_labels"], keep_obs=["louvain"],
                                 source="pbmc68k_reduced")
    meta = cells.meta
    assert meta["input_used"].startswith(".raw") and meta["default_label_key"] == "bulk_labels"
    assert meta["n_cells"] == 700 and meta["n_dropped_empty"] == 0 and meta["top_k"] == 50
    assert all(len(s.split()) <= 50 for s in cells.sentences)
    assert cells.genes(0) == cells.sentences[0].split()
    # splits: disjoint, complete, stratified (every label in train)
    train, test = cells.splits["train"], cells.splits["test"]
    assert np.intersect1d(train, test).size == 0 and train.size + test.size == 700
    assert abs(test.size - 140) <= 10
    assert set(cells.obs["bulk_labels"].iloc[train]) == set(pbmc_small.obs["bulk_labels"].astype(str))
    # vocabulary = number of sentences containing each symbol
    assert cells.vocabulary["FTL"] == sum("FTL" in s.split() for s in cells.sentences)
    out = cells.save(tmp_path / "pbmc")
    import datasets

    ds = datasets.load_from_disk(str(out))
    assert {"cell_id", "cell_sentence", "bulk_labels", "louvain"} <= set(ds.column_names)
    again = CellSentenceDataset.load(out)
    assert again.sentences == cells.sentences and again.meta == json.loads(json.dumps(meta))
    assert list(again.obs.index[:3]) == list(pbmc_small.obs_names[:3])
    assert np.array_equal(again.splits["test"], test)
    assert again.inverse.genes == cells.inverse.genes
    assert json.loads((out / "splits.json").read_text())["stratify"] == "bulk_labels"


def test_inverse_beats_cell2sentence_line_on_pbmc(pbmc_small):
    fid = build_cell_sentences(pbmc_small, label_keys=["bulk_labels"]).meta["inverse_fidelity"]
    # reference: cell2sentence 1.2.0's own fit gives R2 0.91 / Pearson 0.96 on pbmc68k_reduced .raw
    assert fid["r2"] > fid["c2s_linear"]["r2"] + 0.02 and fid["r2"] > 0.93
    assert fid["pearson"] > 0.965 and fid["spearman"] > fid["c2s_linear"]["spearman"]
    assert fid["cells"] == "test split" and fid["n_cells"] == 142


def test_inverse_reconstructs_expression_from_sentences(pbmc_small, tmp_path):
    cells = build_cell_sentences(pbmc_small, top_k=None)
    model = cells.inverse
    model.save(tmp_path / "inverse.json")
    model = InverseModel.load(tmp_path / "inverse.json")
    expr = model.to_expression(cells.sentences[:30])
    assert expr.shape == (30, len(model.genes))
    assert model.genes == [g.upper() for g in pbmc_small.raw.var_names]
    truth = pbmc_small.raw.X[:30].toarray()
    assert np.array_equal(expr > 0, truth > 0)  # exactly the genes of the sentence
    mask = truth > 0
    assert np.corrcoef(expr[mask], truth[mask])[0, 1] > 0.95
    first = cells.genes(0)
    assert expr[0, model.genes.index(first[0])] >= expr[0, model.genes.index(first[-1])]
    # unknown words are ignored, repeats count once, case does not matter
    again = model.to_expression(["ftl NOTAGENE FTL"])
    assert np.count_nonzero(again) == 1


@pytest.mark.shared_data
def test_inverse_beats_cell2sentence_line_on_kang2018(data_dir):
    from cellduality.datasets import load_shared

    adata, spec = load_shared("kang2018", data_dir)
    cells = build_cell_sentences(adata, label_keys=[spec.label_key], perturbation_key=spec.perturbation_key,
                                 control_value=spec.control_value, group_key=spec.group_key)
    fid = cells.meta["inverse_fidelity"]
    # reference: cell2sentence 1.2.0's fit gives R2 0.79 / Pearson 0.89 on Kang 2018
    assert fid["c2s_linear"]["r2"] < 0.82 and fid["r2"] > 0.9 and fid["pearson"] > 0.95
    # controls: same cell type, same split, control condition; -1 exactly for controls
    obs, pairs = cells.obs, cells.controls
    is_control = (obs["condition"] == "control").to_numpy()
    assert (pairs[is_control] == -1).all() and (pairs[~is_control] >= 0).all()
    assert is_control[pairs[~is_control]].all()
    assert (obs["cell_type"].to_numpy()[pairs[~is_control]] == obs["cell_type"].to_numpy()[~is_control]).all()
    in_test = np.isin(np.arange(len(obs)), cells.splits["test"])
    assert (in_test[pairs[~is_control]] == in_test[~is_control]).all()


def test_threads_and_blocks_give_the_same_sentences(monkeypatch):
    import cellduality.sentences.ranking as ranking

    rng = np.random.default_rng(5)
    dense = rng.poisson(0.7, (300, 60)).astype(np.float32)
    adata = make_adata(dense)
    expected = independent_sentences(dense, list(adata.var_names), 7, 3)
    monkeypatch.setattr(ranking, "_BLOCK_NNZ", 64)  # many small blocks
    assert to_sentences(adata, top_k=7, seed=3) == expected
    assert to_sentences(adata, top_k=7, seed=3, threads=3) == expected
