"""Open datasets: ``.h5ad`` paths with clear errors, scanpy's bundled pbmc68k_reduced, the shared sets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cellduality.datasets.registry import OFFLINE, DatasetSpec, get_spec
from cellduality.errors import CellDualityError, InputDataError
from cellduality.paths import shared_data_dir

log = logging.getLogger(__name__)


def read_h5ad(path: str | Path):
    """``anndata.read_h5ad`` with one-line errors for a missing file or a file that is not h5ad."""
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path} does not exist; pass an .h5ad file or a built-in name "
                             f"({', '.join(OFFLINE)}).")
    if path.is_dir():
        raise InputDataError(f"{path} is a folder; pass an .h5ad file.")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise InputDataError(f"{path} is not an h5ad (HDF5) file; convert it with anndata/scanpy first.")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # a damaged HDF5 / not an AnnData layout
        raise InputDataError(f"{path} could not be read as AnnData ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc


def load_pbmc68k_reduced():
    """scanpy's bundled 700-cell PBMC set (the embedded default; rank on ``.raw``)."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def _apply_drop(adata, spec: DatasetSpec):
    for column, values in spec.drop.items():
        if column in adata.obs.columns:
            keep = ~adata.obs[column].astype(str).isin(values).to_numpy()
            if not keep.all():
                log.info("%s: dropped %d cells with %s in %s", spec.name, int((~keep).sum()), column, values)
                adata = adata[np.flatnonzero(keep)].copy()
    return adata


def load_shared(name: str, data_dir: str | Path | None = None):
    """``(adata, spec)`` for an offline set; ``spec.defaults()`` gives its recommended keys.

    The shared folder comes from ``data_dir`` or :func:`cellduality.paths.shared_data_dir`.
    A gene map named by the spec is resolved to an absolute path in ``defaults()['gene_map']``.
    """
    spec = get_spec(name)
    if spec.name == "pbmc68k_reduced":
        return load_pbmc68k_reduced(), spec
    if spec.path is None:
        raise CellDualityError(f"{spec.name} is not available offline; see `cellduality datasets list`.")
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    if root is None or not (root / spec.path).is_file():
        raise CellDualityError(f"{spec.path} not found (shared data folder: {root}); "
                               "set CELLDUALITY_DATA_DIR to the folder holding it.")
    adata = _apply_drop(read_h5ad(root / spec.path), spec)
    if spec.gene_map:
        from dataclasses import replace

        spec = replace(spec, gene_map=str(root / spec.gene_map))
    return adata, spec


def load_dataset(source: str | Path, data_dir: str | Path | None = None):
    """``(adata, defaults)`` from a built-in name or an ``.h5ad`` path (defaults are empty for paths)."""
    text = str(source)
    if not text.endswith(".h5ad") and not Path(text).exists():
        adata, spec = load_shared(text, data_dir)
        return adata, spec.defaults()
    return read_h5ad(text), {}
