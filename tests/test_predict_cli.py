"""``cellduality predict``: any task of a model from the command line, inputs one value or one per cell (#11)."""

from __future__ import annotations

import anndata as ad
import pytest

from helpers import run_cli, save_tiny_model


def run(args: list, capsys) -> tuple[int, str]:
    code, out, err = run_cli(args, capsys)
    return code, out + err


@pytest.fixture(scope="module")
def generation_model(pbmc_small, tmp_path_factory):
    """A `tiny` random model saved as a CellDuality model of pbmc68k's generation task, with the
    inverse of its sentences (generated cells become expression)."""
    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks import build_task_datasets

    root = tmp_path_factory.mktemp("predict")
    cells = build_cell_sentences(pbmc_small, top_k=24, label_keys=["bulk_labels"], seed=0)
    build_task_datasets(cells.save(root / "sentences"), ["generation"], root / "tasks", max_genes=8, seed=0,
                        max_examples=12)
    return save_tiny_model(root / "tasks", root / "model")


def test_predict_generates_a_cell_per_cell_from_an_obs_column(generation_model, pbmc_small, tmp_path, capsys):
    cells = pbmc_small[:6].copy()
    cells.write_h5ad(tmp_path / "cells.h5ad")
    code, text = run(["predict", tmp_path / "cells.h5ad", "--model", generation_model, "--task", "generation",
                      "--input", "cell_type=obs:bulk_labels", "--out", tmp_path / "gen.h5ad", "--max-new-tokens", 12,
                      "--key-added", "gen"], capsys)
    assert code == 0, text
    out = ad.read_h5ad(tmp_path / "gen.h5ad")
    assert out.obsm["gen_generated"].shape == (cells.n_obs, cells.n_vars)
    assert len(out.obs["gen_generated_sentence"]) == cells.n_obs and "gen_consistent" in out.obs
    assert out.uns["gen"]["generation"]["cell_type"] == "per cell"
    assert "gen_generated_sentence" in text and "read back as asked" in text
    assert "cellduality" not in out.uns  # only under --key-added

    # one value for every cell; the input file is never replaced, an existing --out only with --overwrite
    code, text = run(["predict", tmp_path / "cells.h5ad", "--model", generation_model, "--task", "generation",
                      "--input", "cell_type=CD14+ Monocyte", "--out", tmp_path / "gen.h5ad", "--max-new-tokens", 12],
                     capsys)
    assert code == 2 and "--overwrite" in text
    code, text = run(["predict", tmp_path / "cells.h5ad", "--model", generation_model, "--task", "generation",
                      "--input", "cell_type=CD14+ Monocyte", "--out", tmp_path / "gen.h5ad", "--max-new-tokens", 12,
                      "--overwrite"], capsys)
    assert code == 0, text
    assert ad.read_h5ad(tmp_path / "gen.h5ad").uns["cellduality"]["generation"]["cell_type"] == "CD14+ Monocyte"


def test_predict_annotation_is_the_annotate_command(tiny_model, pbmc_small, tmp_path, capsys):
    """``annotate`` is ``predict --task annotation``: the same labels, confidences and report."""
    mdl, _ = tiny_model
    pbmc_small[:6].copy().write_h5ad(tmp_path / "cells.h5ad")
    common = ["--model", mdl.path, "--batch-size", 6]
    code, annotated_text = run(["annotate", tmp_path / "cells.h5ad", *common, "--out", tmp_path / "a.h5ad"], capsys)
    assert code == 0, annotated_text
    code, predicted_text = run(["predict", tmp_path / "cells.h5ad", *common, "--task", "annotation",
                                "--out", tmp_path / "p.h5ad"], capsys)
    assert code == 0, predicted_text
    annotated, predicted = ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_h5ad(tmp_path / "p.h5ad")
    assert list(annotated.obs["cellduality_cell_type"]) == list(predicted.obs["cellduality_cell_type"])
    assert annotated.obs["cellduality_confidence"].tolist() == pytest.approx(
        predicted.obs["cellduality_confidence"].tolist())
    assert "cellduality_cell_type (6 cells)" in predicted_text
    wrote = ".obs['cellduality_cell_type', 'cellduality_reasoning', 'cellduality_confidence']"
    assert all(wrote in "".join(text.split("Wrote")[-1].split()).replace(",", ", ")
               for text in (annotated_text, predicted_text))
