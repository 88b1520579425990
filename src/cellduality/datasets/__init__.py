"""Datasets: the paper's benchmark registry, offline loaders, splits and control pairing."""

from __future__ import annotations

from cellduality.datasets.download import download, fetch, sha256_of
from cellduality.datasets.loaders import load_dataset, load_pbmc68k_reduced, load_shared, read_h5ad
from cellduality.datasets.registry import BENCHMARKS, OFFLINE, DatasetSpec, get_spec
from cellduality.datasets.splits import pair_controls, stratified_split

__all__ = ["BENCHMARKS", "OFFLINE", "DatasetSpec", "download", "fetch", "get_spec", "load_dataset",
           "load_pbmc68k_reduced", "load_shared", "pair_controls", "read_h5ad", "sha256_of", "stratified_split"]
