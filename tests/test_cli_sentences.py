"""`cellduality sentences` / `cellduality datasets list` and every bad input: one line, no half-written output."""

from __future__ import annotations

import json

import anndata as ad
import datasets
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellduality.cli.main import main


def run(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return exc.value.code, captured.out + captured.err


def write(tmp_path, dense, names=None, name="in.h5ad", **obs) -> str:
    frame = pd.DataFrame(obs or {"cell_type": ["T"] * dense.shape[0]},
                         index=[f"c{i}" for i in range(dense.shape[0])])
    adata = ad.AnnData(sp.csr_matrix(np.asarray(dense, dtype=np.float32)), obs=frame)
    adata.var_names = names or [f"G{j}" for j in range(dense.shape[1])]
    path = tmp_path / name
    adata.write_h5ad(path)
    return str(path)


def counts(n=40, g=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(1.0, (n, g)).astype(np.float32)


def assert_one_line_error(code, text, pattern):
    assert code == 2, text
    assert "Traceback" not in text
    error = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and pattern in error[0], text


def test_sentences_command_on_the_builtin_default(capsys, tmp_path):
    out = tmp_path / "pbmc"
    with pytest.raises(SystemExit) as exc:
        main(["sentences", "pbmc68k_reduced", str(out), "--top-k", "32"])
    assert exc.value.code in (0, None)
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["cell_id", "cell_sentence", "bulk_labels"] and len(ds) == 700
    assert len(ds[0]["cell_sentence"].split()) == 32
    meta = json.loads((out / "cellduality.json").read_text())
    assert meta["input_used"].startswith(".raw") and meta["default_label_key"] == "bulk_labels"
    assert {"vocabulary.json", "inverse.json", "splits.json"} <= {p.name for p in out.iterdir()}
    assert "Wrote 700 cell sentences" in capsys.readouterr().err


def test_sentences_command_perturbation_keys_and_dropped_empty_cells(capsys, tmp_path):
    dense = counts()
    dense[[3, 7]] = 0
    cond = ["control" if i % 2 else "stim" for i in range(40)]
    path = write(tmp_path, dense, condition=cond, cell_type=["T", "B"] * 20)
    code, text = run(capsys, "sentences", path, str(tmp_path / "o"), "--label-key", "cell_type",
                     "--perturbation-key", "condition", "--control-value", "control", "--group-key", "cell_type")
    assert code in (0, None), text
    meta = json.loads((tmp_path / "o" / "cellduality.json").read_text())
    assert meta["n_dropped_empty"] == 2 and meta["n_cells"] == 38 and meta["input_kind"] == "counts"
    assert meta["perturbation_key"] == "condition" and meta["control_value"] == "control"
    assert "dropped 2 empty cells" in text.replace("\n", " ")
    assert "c3" not in datasets.load_from_disk(str(tmp_path / "o"))["cell_id"]
    controls = json.loads((tmp_path / "o" / "splits.json").read_text())["controls"]
    assert len(controls) == 38 and sum(c == -1 for c in controls) >= 19


def test_datasets_list_prints_the_registry(capsys):
    import typer.testing

    from cellduality.cli.main import app

    result = typer.testing.CliRunner().invoke(app, ["datasets", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in ("He-2020-Liver", "sci-Plex3", "GSE110894", "pbmc68k_reduced"):
        assert name in result.output


@pytest.mark.parametrize("case", ["missing", "not_h5ad", "label_key", "nonfinite", "negative_counts",
                                  "all_zero", "empty", "not_symbols", "bad_control", "bad_layer"])
def test_bad_inputs_give_one_line_and_no_output(capsys, tmp_path, case):
    out = tmp_path / "out"
    args: list[str] = []
    if case == "missing":
        path, pattern = str(tmp_path / "nope.h5ad"), "does not exist"
    elif case == "not_h5ad":
        (tmp_path / "x.h5ad").write_text("cell,gene\n1,2\n")
        path, pattern = str(tmp_path / "x.h5ad"), "is not an h5ad"
    elif case == "label_key":
        path, pattern = write(tmp_path, counts()), "--label-key 'celltype' is not an .obs column (available: cell_type)"
        args = ["--label-key", "celltype"]
    elif case == "nonfinite":
        dense = counts()
        dense[0, 0] = np.nan
        path, pattern = write(tmp_path, dense), "non-finite values"
    elif case == "negative_counts":
        dense = counts()
        dense[0, 1] = -3
        path, pattern = write(tmp_path, dense), "should hold counts but has negative values"
        args = ["--expression", "counts"]
    elif case == "all_zero":
        path, pattern = write(tmp_path, np.zeros((5, 4))), "every cell has zero expression"
    elif case == "empty":
        path, pattern = write(tmp_path, np.zeros((0, 4))), "the dataset is empty"
    elif case == "not_symbols":
        names = [f"ENSG{100000 + j:011d}" for j in range(30)]
        path, pattern = write(tmp_path, counts(), names=names), "look like ensembl ids"
    elif case == "bad_control":
        path, pattern = write(tmp_path, counts(), cond=["a", "b"] * 20), "--control-value 'ctrl' does not occur"
        args = ["--perturbation-key", "cond", "--control-value", "ctrl"]
    else:
        path, pattern = write(tmp_path, counts()), "layer 'counts' not found"
        args = ["--layer", "counts"]
    code, text = run(capsys, "sentences", path, str(out), *args)
    assert_one_line_error(code, text, pattern)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_duplicate_genes_warn_and_keep_the_first(capsys, tmp_path):
    path = write(tmp_path, counts(g=4), names=["A", "B", "a", "C"])
    code, text = run(capsys, "sentences", path, str(tmp_path / "o"), "--top-k", "0")
    assert code in (0, None) and "dropped 1 duplicate gene symbols" in text
    sentences = datasets.load_from_disk(str(tmp_path / "o"))["cell_sentence"]
    assert all(len(s.split()) == len(set(s.split())) for s in sentences)


def test_existing_foreign_folder_is_never_overwritten(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, text = run(capsys, "sentences", write(tmp_path, counts()), str(out))
    assert_one_line_error(code, text, "did not write")
    assert (out / "precious.txt").read_text() == "keep me"


def test_rerun_replaces_a_previous_output_atomically(capsys, tmp_path):
    path = write(tmp_path, counts())
    code, _ = run(capsys, "sentences", path, str(tmp_path / "o"), "--top-k", "5")
    assert code in (0, None)
    code, text = run(capsys, "sentences", path, str(tmp_path / "o"), "--top-k", "7")  # replaced only on request
    assert_one_line_error(code, text, "--overwrite")
    code, _ = run(capsys, "sentences", path, str(tmp_path / "o"), "--top-k", "7", "--overwrite")
    assert code in (0, None)
    meta = json.loads((tmp_path / "o" / "cellduality.json").read_text())
    assert meta["top_k"] == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "o"]


def test_load_refuses_a_folder_that_is_not_sentences(tmp_path):
    from cellduality.errors import CellDualityError
    from cellduality.sentences import CellSentenceDataset

    with pytest.raises(CellDualityError, match="is not a cell-sentences folder"):
        CellSentenceDataset.load(tmp_path)
