"""Classical baselines on real data: well above chance, scored exactly like a model."""

from __future__ import annotations

import pytest


@pytest.mark.shared_data
def test_logreg_and_knn_on_pbmc68k_shared(data_dir, tmp_path):
    import anndata as ad

    from cellduality.evaluation.baselines import run_baselines
    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks import build_task_datasets
    from conftest import shared_file

    adata = ad.read_h5ad(shared_file(data_dir, "pbmc68k_reduced_scanpy/10x_pbmc68k_reduced.h5ad"))
    build_cell_sentences(adata, label_keys=["bulk_labels"], top_k=64, seed=0).save(tmp_path / "sent")
    build_task_datasets(tmp_path / "sent", ["annotation"], tmp_path / "tasks")
    result = run_baselines(tmp_path / "tasks")["annotation"]
    chance = 1 / 10  # 10 types; majority class is ~24%
    assert result["logreg"]["accuracy"] > 3 * chance
    assert result["knn10"]["accuracy"] > 2 * chance
    assert 0 < result["logreg"]["macro_f1"] <= 1


@pytest.mark.shared_data
def test_perturbation_baselines_on_kang2018(data_dir, tmp_path):
    """Control + mean IFN-β shift must land closer to real stimulated cells than the control itself."""
    import anndata as ad

    from cellduality.evaluation.baselines import run_baselines
    from cellduality.sentences import build_cell_sentences
    from cellduality.tasks import build_task_datasets
    from conftest import shared_file

    adata = ad.read_h5ad(shared_file(data_dir, "kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad"))
    cells = build_cell_sentences(adata, label_keys=["cell_type"], perturbation_key="condition",
                                 control_value="control", group_key="cell_type", top_k=64, seed=0)
    cells.save(tmp_path / "sent")
    build_task_datasets(tmp_path / "sent", ["perturbation"], tmp_path / "tasks", max_examples=300)
    result = run_baselines(tmp_path / "tasks")["perturbation"]
    stim = next(k for k in result["control_cell"] if k.startswith("scfid/") and "IFN" in k)
    assert result["control_plus_mean_shift"][stim] < result["control_cell"][stim]
    assert result["control_plus_mean_shift"]["mmd"] >= 0
