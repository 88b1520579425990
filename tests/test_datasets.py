"""Dataset registry, loaders, seeded stratified splits, control pairing, checksummed download (loopback)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pandas as pd
import pytest

from cellduality.datasets import (
    BENCHMARKS,
    download,
    fetch,
    get_spec,
    load_dataset,
    load_shared,
    pair_controls,
    stratified_split,
)
from cellduality.errors import CellDualityError

PAPER = ["He-2020-Liver", "Segerstolpe-2016", "Xin-2016", "Human-Immune-Tissue", "Ma-2020",
         "Bastidas-Ponce-2019", "L1000", "GSE149383", "GSE117872", "GSE110894", "sci-Plex3"]


def test_registry_has_the_papers_eleven_benchmarks():
    assert list(BENCHMARKS) == PAPER
    for spec in BENCHMARKS.values():
        assert spec.citation and spec.accession and spec.species in {"human", "mouse"}
        assert spec.theme in {"cell identity", "cell dynamics"} and ("ID" in spec.role or "OOD" in spec.role
                                                                     or "train" in spec.role)
    assert {s.name for s in BENCHMARKS.values() if "OOD" in s.role} == {
        "Ma-2020", "Bastidas-Ponce-2019", "GSE110894", "sci-Plex3"}
    assert get_spec("gse110894").species == "mouse"
    with pytest.raises(CellDualityError, match="unknown dataset 'nope'"):
        get_spec("nope")


def test_stratified_split_is_seeded_disjoint_and_keeps_rare_labels():
    labels = ["a"] * 50 + ["b"] * 10 + ["c"] * 2 + ["d"]
    split = stratified_split(labels, 0.2, seed=3)
    again = stratified_split(labels, 0.2, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["test"], stratified_split(labels, 0.2, seed=4)["test"])
    train, test = split["train"], split["test"]
    assert np.intersect1d(train, test).size == 0 and sorted([*train, *test]) == list(range(63))
    lab = np.array(labels)
    assert (lab[test] == "a").sum() == 10 and (lab[test] == "b").sum() == 2
    assert (lab[test] == "c").sum() == 1 and "d" in lab[train] and "d" not in lab[test]
    plain = stratified_split(None, 0.25, seed=0, n=8)
    assert plain["test"].size == 2 and plain["train"].size == 6
    with pytest.raises(CellDualityError):
        stratified_split(labels, 1.5)


def test_pair_controls_matches_group_and_is_seeded():
    obs = pd.DataFrame({"cond": ["ctrl", "stim", "stim", "ctrl", "stim", "ctrl", "stim"],
                        "type": ["T", "T", "B", "B", "B", "T", "NK"]})
    paired = pair_controls(obs, "cond", "ctrl", group_key="type", seed=0)
    assert paired[[0, 3, 5]].tolist() == [-1, -1, -1]  # controls
    assert paired[1] in (0, 5) and paired[2] == 3 and paired[4] == 3
    assert paired[6] == -1  # no NK control
    assert np.array_equal(paired, pair_controls(obs, "cond", "ctrl", group_key="type", seed=0))
    anyone = pair_controls(obs, "cond", "ctrl")
    assert set(anyone[[1, 2, 4, 6]]) <= {0, 3, 5}
    with pytest.raises(CellDualityError, match="no cell has cond == 'control'"):
        pair_controls(obs, "cond", "control")
    with pytest.raises(CellDualityError, match="'group' is not an .obs column"):
        pair_controls(obs, "cond", "ctrl", group_key="group")


@pytest.fixture()
def loopback_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_sha256_and_is_atomic(loopback_server, tmp_path, monkeypatch):
    root, base = loopback_server
    payload = b"not really h5ad but bytes" * 1000
    (root / "set.h5ad").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = download(f"{base}/set.h5ad", tmp_path / "cache" / "set.h5ad", good)
    assert dest.read_bytes() == payload
    with pytest.raises(CellDualityError, match="checksum mismatch"):
        download(f"{base}/set.h5ad", tmp_path / "cache" / "other.h5ad", "0" * 64)
    assert not (tmp_path / "cache" / "other.h5ad").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["set.h5ad"]  # no partial files
    with pytest.raises(CellDualityError, match="could not download"):
        download(f"{base}/missing.h5ad", tmp_path / "cache" / "missing.h5ad")
    # fetch: registry entry without URL explains the manual route; a URL override downloads to the cache
    monkeypatch.setenv("CELLDUALITY_CACHE", str(tmp_path / "c2"))
    with pytest.raises(CellDualityError, match="download it manually from GEO GSE110894"):
        fetch("GSE110894")
    got = fetch("GSE110894", url=f"{base}/set.h5ad", sha256=good)
    assert got == tmp_path / "c2" / "GSE110894" / "set.h5ad" and got.read_bytes() == payload


def test_load_dataset_pbmc_default_and_paths(tmp_path, pbmc_small):
    adata, defaults = load_dataset("pbmc68k_reduced")
    assert adata.shape == pbmc_small.shape and defaults["label_key"] == "bulk_labels"
    with pytest.raises(CellDualityError, match="does not exist"):
        load_dataset(tmp_path / "nope.h5ad")


@pytest.mark.shared_data
def test_shared_loaders_give_recommended_keys(data_dir):
    kang, spec = load_shared("kang2018", data_dir)
    assert spec.perturbation_key == "condition" and spec.control_value == "control"
    assert set(kang.obs["condition"]) == {"control", "stimulated"}
    papalexi, spec = load_shared("papalexi2021", data_dir)
    assert "unassigned" not in set(papalexi.obs["perturbation"]) and papalexi.n_obs == 20729 - 4537
    assert spec.control_value == "non-targeting"
    paired = pair_controls(papalexi.obs, spec.perturbation_key, spec.control_value, spec.group_key)
    controls = papalexi.obs["perturbation"].to_numpy() == "non-targeting"
    assert (paired[controls] == -1).all() and (paired[~controls] >= 0).all()
    reps = papalexi.obs["bio_rep"].to_numpy()
    assert (reps[paired[~controls]] == reps[~controls]).all()
    assert controls[paired[~controls]].all()
