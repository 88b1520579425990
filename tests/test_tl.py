"""``cd.tl.annotate``: scanpy conventions (copy, key_added, results in .obs/.uns) on real cells."""

from __future__ import annotations

import pytest

import cellduality as cd
from cellduality.errors import CellDualityError


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
