"""Shared fixtures: real data from ../shared/data (skipped with a clear reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellduality.paths import shared_data_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting collapse on a shared, oversubscribed CPU (a tiny model step
# measured 12x slower with 2 spinning threads than with 2 passive ones on this shared machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real single-cell data folder; skips the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared real data not found: set CELLDUALITY_DATA_DIR or place it at ../shared/data")
    return path


def shared_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"{relative} missing from {data_dir}")
    return path


@pytest.fixture(scope="session")
def pbmc_small():
    """scanpy's bundled pbmc68k_reduced (700 cells, ships with scanpy, works offline)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()
