"""``cd.tl.predict`` / ``cd.tl.annotate``: scanpy conventions (copy, key_added, results in .obs/.obsm/.uns)
on real cells, dispatched through the task's declarations."""

from __future__ import annotations

import pytest

import cellduality as cd
from cellduality.errors import CellDualityError
from cellduality.sentences import build_cell_sentences
from cellduality.tasks.base import format_response
from cellduality.tasks.builders import make_tasks
from helpers import FakeModel, class_profiles


def test_annotate_in_place_returns_none_and_writes_under_key_added(tiny_model, pbmc_small):  # noqa: F811
    mdl, _ = tiny_model
    adata = pbmc_small[:40].copy()
    before = set(adata.obs.columns)
    assert cd.tl.annotate(adata, mdl, key_added="ct", copy=False, direct=True) is None
    added = set(adata.obs.columns) - before
    assert {"ct_cell_type", "ct_confidence"} <= added and all(c.startswith("ct_") for c in added)
    assert set(adata.obs["ct_cell_type"]) <= set(mdl.task("annotation").context.labels)
    assert ((adata.obs["ct_confidence"] > 0) & (adata.obs["ct_confidence"] <= 1)).all()
    assert "ct" in adata.uns and "cellduality" not in adata.uns


def test_annotate_copy_leaves_the_input_alone(tiny_model, pbmc_small):  # noqa: F811
    mdl, _ = tiny_model
    adata = pbmc_small[:30].copy()
    columns = list(adata.obs.columns)
    out = cd.tl.annotate(adata, mdl, copy=True, direct=True)
    assert out is not adata and list(adata.obs.columns) == columns and "cellduality" not in adata.uns
    assert "cellduality_cell_type" in out.obs and out.n_obs == adata.n_obs
    with pytest.raises(CellDualityError, match="key_added"):
        cd.tl.annotate(adata, mdl, key_added="bad key")


def test_predict_dispatches_annotation_like_annotate(tiny_model, pbmc_small):
    mdl, _ = tiny_model
    adata = pbmc_small[:25].copy()
    assert cd.tl.predict(adata, mdl, task="annotation", key_added="p", direct=True) is None
    reference = cd.tl.annotate(pbmc_small[:25].copy(), mdl, key_added="p", copy=True, direct=True)
    assert list(adata.obs["p_cell_type"]) == list(reference.obs["p_cell_type"])
    assert adata.obs["p_confidence"].tolist() == reference.obs["p_confidence"].tolist()
    assert adata.uns["p"]["annotation"]["method"] == "fast"
    with pytest.raises(CellDualityError, match="Unknown option drug for task 'annotation'"):
        cd.tl.predict(adata, mdl, task="annotation", drug="PLX4720")
    with pytest.raises(CellDualityError, match="knows: annotation"):
        cd.tl.predict(adata, mdl, task="perturbation", perturbation="knockout of STAT1")


def test_predict_generates_a_cell_per_cell_from_an_obs_column(pbmc_small):
    """A generative task through the same entry point: one input value per cell, read back by the dual."""
    cells = build_cell_sentences(pbmc_small, top_k=32, label_keys=["bulk_labels"], seed=0)
    task = make_tasks(cells, ["generation"], cells.splits["train"], max_genes=24)["generation"]
    profiles = class_profiles(cells, task)
    asked: list[str] = []

    def sample(prompts):  # writes the top genes of the type each prompt asks for
        labels = sorted(task.context.labels, key=len, reverse=True)
        asked.extend(next(lab for lab in labels if lab in p) for p in prompts)
        return [format_response("typical genes", " ".join(profiles[asked[-len(prompts) + i]][:20]))
                for i in range(len(prompts))]

    def dual(prompts):  # names the type whose profile the generated cell matches best
        return [format_response("", max(task.context.labels, key=lambda lab: len(set(p.split()) & set(profiles[lab]))))
                for p in prompts]

    model = FakeModel({"generation": task}, sample, dual)
    model._inverse = cells.inverse
    adata = pbmc_small[:16].copy()
    out = cd.tl.predict(adata, model, task="generation", key_added="gen", copy=True, temperature=0.8,
                        cell_type=adata.obs["bulk_labels"])
    assert out is not adata and "gen" not in adata.uns
    assert asked == list(adata.obs["bulk_labels"].astype(str))  # each cell's own type was asked for
    assert out.obsm["gen_generated"].shape == (adata.n_obs, adata.n_vars) and out.obsm["gen_generated"].any()
    assert [s.split() for s in out.obs["gen_generated_sentence"]] == [profiles[t][:20] for t in asked]
    assert out.obs["gen_consistent"].mean() > 0.5 and set(out.obs["gen_dual_cell_type"]) <= set(task.context.labels)
    assert out.uns["gen"]["generation"]["cell_type"] == "per cell"
    with pytest.raises(CellDualityError, match="Unknown cell type 'Neuron'"):
        cd.tl.predict(adata, model, task="generation", cell_type="Neuron")
    with pytest.raises(CellDualityError, match="needs cell_type="):
        cd.tl.predict(adata, model, task="generation")
    with pytest.raises(CellDualityError, match="3 values for 16 cells"):
        cd.tl.predict(adata, model, task="generation", cell_type=["CD14+ Mono"] * 3)
    with pytest.raises(CellDualityError, match="apply to classification tasks"):
        cd.tl.predict(adata, model, task="generation", cell_type="CD14+ Monocyte", method="rerank")


def test_predict_passes_a_task_input_into_every_prompt(pbmc_small, pbmc_task):
    """Sensitivity's drug: checked against the model's drugs and written into each cell's prompt."""
    from cellduality.tasks.base import TaskContext, get_task

    _, annotation = pbmc_task
    context = TaskContext(labels=("resistant", "sensitive"), genes=annotation.context.genes, drugs=("PLX4720", "DMSO"))
    task = get_task("sensitivity", context)
    prompts: list[str] = []
    model = FakeModel({"sensitivity": task}, lambda ps: (prompts.extend(ps), [format_response("r", "sensitive")] * len(ps))[1],
                      lambda ps: [format_response("", "CD74")] * len(ps))
    adata = pbmc_small[:10].copy()
    drugs = ["PLX4720", "DMSO"] * 5
    cd.tl.predict(adata, model, task="sensitivity", drug=drugs, method="rerank", n_samples=2)
    assert (adata.obs["cellduality_sensitivity"] == "sensitive").all()
    assert [d in p for d, p in zip(drugs, prompts[::2], strict=True)] == [True] * 10
    assert adata.uns["cellduality"]["sensitivity"]["drug"] == "per cell"
    with pytest.raises(CellDualityError, match="Unknown drug 'aspirin'"):
        cd.tl.predict(adata, model, task="sensitivity", drug="aspirin", method="rerank")
