"""Inference on a user's AnnData: duality reranking, gene overlap, outputs written back, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cellduality.cli.main import app
from cellduality.errors import CellDualityError
from cellduality.inference import duality_rerank, gene_overlap
from cellduality.inference.predict import annotate
from cellduality.sentences import build_cell_sentences
from cellduality.tasks.base import Example, format_response
from cellduality.tasks.builders import make_tasks
from cellduality.tasks.text import genes_of
from helpers import FakeModel, class_profiles, knowledge_dual


def test_duality_rerank_prefers_true_labels(pbmc_task):
    cells, task = pbmc_task
    labels = cells.obs["bulk_labels"].astype(str).to_numpy()
    test = list(cells.splits["test"])[:60]
    examples = [Example(id=str(i), task="annotation", input={"cell": genes_of(cells.sentences[i], 24)},
                        target=None, seed=i) for i in test]
    rng = np.random.default_rng(0)
    wrong = {i: rng.choice([lab for lab in task.context.labels if lab != labels[i]]) for i in test}

    def sample(prompts: list[str]) -> list[str]:
        # two samples per cell, the wrong label first: order and votes cannot favour the true one
        outs = []
        for k in range(0, len(prompts), 2):
            i = test[k // 2]
            outs += [format_response("", wrong[i]), format_response("", labels[i])]
        return outs

    ranked = duality_rerank(task, examples, sample, knowledge_dual(task, class_profiles(cells, task)), n_samples=2)
    accuracy = np.mean([r.answer == labels[i] for r, i in zip(ranked, test, strict=True)])
    assert accuracy > 0.75  # 0.5 would mean reranking carries no information
    assert all(0.0 <= r.confidence <= 1.0 and r.n_valid == 2 for r in ranked)


def test_duality_rerank_handles_malformed_samples(pbmc_task):
    cells, task = pbmc_task
    ex = Example(id="x", task="annotation", input={"cell": genes_of(cells.sentences[0], 24)}, target=None, seed=1)
    ranked = duality_rerank(task, [ex], lambda ps: ["no answer here"] * len(ps),
                            lambda ps: pytest.fail("dual must not run on malformed output"), n_samples=3)
    assert ranked[0].answer is None and ranked[0].confidence == 0.0 and ranked[0].votes == 0


def test_gene_overlap_counts_model_genes_present():
    assert gene_overlap([["A", "B"], ["B", "C"]], {"A", "C", "Z"}) == (2, 3)


def test_cells_are_ranked_within_the_model_panel(pbmc_small, pbmc_task):
    """Genes the model never saw are skipped, the order of the others is kept."""
    from cellduality.inference.predict import model_sentences
    from cellduality.sentences import to_sentences

    _, task = pbmc_task
    adata = pbmc_small[:30].copy()
    max_genes = int(task.options.get("max_genes", 32))
    for seed in (0, 1):
        full = [s.split() for s in to_sentences(adata, top_k=None, seed=seed)]
        cells, overlap = model_sentences(adata, task, seed=seed)
        assert len(cells) == adata.n_obs
        for genes, ranked in zip(cells, full, strict=True):  # the text route, exactly (ranked on indices now)
            assert genes == [g for g in ranked if g in task.context.genes][:max_genes]
        assert overlap["model_genes"] == len(task.context.genes)
        assert overlap["model_genes_in_data"] == len({g for r in full for g in r} & task.context.genes)
    assert 0 < overlap["overlap"] <= 1


def test_panel_genes_missing_from_a_cell_give_a_shorter_or_empty_sentence(pbmc_small, pbmc_task):
    from types import SimpleNamespace

    from cellduality.inference.predict import model_sentences
    from cellduality.sentences import to_sentences

    _, task = pbmc_task
    adata = pbmc_small[:5].copy()
    top = to_sentences(adata[:1], top_k=3)[0].split()  # the first cell's top 3 genes form the panel
    small = SimpleNamespace(context=SimpleNamespace(genes=frozenset(top)), options=task.options)  # what it reads
    cells, overlap = model_sentences(adata, small, seed=0)
    assert cells[0] == top and all(set(c) <= set(top) for c in cells)
    assert overlap == {"model_genes": 3, "model_genes_in_data": len({g for c in cells for g in c}),
                       "overlap": round(len({g for c in cells for g in c}) / 3, 4)}
    assert model_sentences(adata[:0], task, seed=0)[0] == []


def test_annotate_writes_results_into_a_copy(pbmc_small, pbmc_task):
    cells, task = pbmc_task
    profiles = class_profiles(cells, task)
    first = task.context.labels[0]
    model = FakeModel({"annotation": task}, lambda ps: [format_response("reasons", first)] * len(ps),
                      knowledge_dual(task, profiles))
    adata = pbmc_small[:20].copy()
    before = adata.obs.copy()
    out = annotate(adata, model, n_samples=2, method="rerank")
    assert out is not adata
    assert list(adata.obs.columns) == list(before.columns)  # input untouched
    assert (out.obs["cellduality_cell_type"] == first).all()
    assert (out.obs["cellduality_reasoning"] == "reasons").all()
    assert out.obs["cellduality_confidence"].between(0, 1).all()
    assert out.uns["cellduality"]["annotation"]["overlap"] > 0.9


def test_annotate_stops_when_genes_do_not_overlap(pbmc_small, pbmc_task):
    _, task = pbmc_task
    adata = pbmc_small[:10].copy()
    adata.raw = None
    adata.var_names = [f"NOTAGENE{i}" for i in range(adata.n_vars)]
    adata.X = np.abs(np.asarray(adata.X))
    model = FakeModel({"annotation": task}, lambda ps: [], lambda ps: [])
    with pytest.raises(CellDualityError, match="gene the model knows"):
        annotate(adata, model)


def test_unknown_task_lists_known_ones(pbmc_task):
    _, task = pbmc_task
    model = FakeModel({"annotation": task}, lambda ps: [], lambda ps: [])
    with pytest.raises(CellDualityError, match="knows: annotation"):
        model.task("perturbation")


def test_cli_rejects_non_model_folder_and_in_place_output(tmp_path, pbmc_small):
    path = tmp_path / "cells.h5ad"
    pbmc_small[:5].copy().write_h5ad(path)
    runner = CliRunner()
    res = runner.invoke(app, ["annotate", str(path), "--model", str(tmp_path), "--out", str(tmp_path / "o.h5ad")])
    assert res.exit_code != 0 and isinstance(res.exception, CellDualityError)
    assert "not a CellDuality model" in str(res.exception)
    res = runner.invoke(app, ["annotate", str(path), "--model", str(tmp_path), "--out", str(path)])
    assert isinstance(res.exception, CellDualityError) and "never modified" in str(res.exception)


def test_generate_cells_reads_back_and_reconstructs_expression(pbmc_small):
    from cellduality.inference import generate_cells

    cells = build_cell_sentences(pbmc_small, top_k=32, label_keys=["bulk_labels"], seed=0)
    task = make_tasks(cells, ["generation"], cells.splits["train"], max_genes=24)["generation"]
    profiles = class_profiles(cells, task)
    wanted = "CD19+ B"
    model = FakeModel({"generation": task},
                      lambda ps: [format_response("typical B cell", " ".join(profiles[wanted][:20]))] * len(ps),
                      lambda ps: [format_response("", wanted if i % 2 == 0 else "not a type") for i, _ in enumerate(ps)])
    model._inverse = cells.inverse
    out = generate_cells(model, wanted, 4)
    assert out.n_obs == 4 and out.n_vars == len(cells.inverse.genes)
    assert list(out.obs["cellduality_consistent"]) == [True, False, True, False]
    assert (np.asarray(out.X).sum(axis=1) > 0).all()
    assert out.obs["cellduality_sentence"].iloc[0].split() == profiles[wanted][:20]
    with pytest.raises(CellDualityError, match="Unknown cell type"):
        generate_cells(model, "Neuron", 2)
