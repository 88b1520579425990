"""Which matrix to rank and how to turn it into "normalised expression".

Ranking only needs the order of a cell's genes, and per-cell scaling plus ``log1p`` never change
that order (equal counts stay equal), so raw counts are ranked directly. The normalised values
(``normalize_total`` to 10^4 then ``log1p``, scanpy's convention) are only computed where values
matter: fitting and checking the inverse model.

Input kinds (detected on the chosen matrix, or claimed with ``expression=``):

* ``counts``   non-negative integers -> normalise to 10^4 per cell, log1p;
* ``log1p``    non-negative, non-integer, max <= 30 (log-normalised) -> used as is;
* ``tpm``      non-negative, non-integer, larger values (TPM/CPM-like) -> ranked as is, log1p for values;
* ``scaled``   negative values present (z-scored / centred) -> ranked as is, values used as is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cellduality.errors import InputDataError

log = logging.getLogger(__name__)

KINDS = ("counts", "log1p", "tpm", "scaled")
_COUNT_LAYER_NAMES = {"counts", "raw_counts", "umi", "umis"}
_LOG_MAX = 30.0


@dataclass
class ChosenInput:
    """The matrix to rank (CSR, cells x genes), its gene names, and a sentence saying what was done."""

    matrix: sp.csr_matrix
    var_names: list[str]
    var: object  # the pandas DataFrame of gene annotations that goes with the matrix
    source: str  # "X", ".raw" or "layers['NAME']"
    kind: str

    @property
    def description(self) -> str:
        how = {
            "counts": "raw counts, normalised to 1e4 per cell and log1p",
            "log1p": "log-normalised values, used as is",
            "tpm": "TPM-like values, ranked as is (log1p for expression values)",
            "scaled": "scaled/z-scored values, ranked as is",
        }[self.kind]
        return f"{self.source}: {how}"


def _as_csr(matrix) -> sp.csr_matrix:
    if getattr(matrix, "dtype", None) == np.float16:  # scipy.sparse has no float16: widen, losing nothing
        matrix = matrix.astype(np.float32)
    out = sp.csr_matrix(matrix) if sp.issparse(matrix) else sp.csr_matrix(np.asarray(matrix))
    if out.dtype.kind not in "fiub":
        raise InputDataError(f"expression values have dtype {out.dtype}; expected numbers.")
    if out.dtype.kind != "f":
        out = out.astype(np.float32)
    return out


def detect_kind(data: np.ndarray) -> str:
    """Guess the kind of the nonzero values ``data`` (see the module docstring)."""
    if data.size == 0:
        return "counts"
    if data.min() < 0:
        return "scaled"
    if np.array_equal(data, np.round(data)):
        return "counts"
    return "log1p" if data.max() <= _LOG_MAX else "tpm"


def choose_input(adata, *, layer: str | None = None, use_raw: bool | None = None,
                 expression: str = "auto") -> ChosenInput:
    """Pick the matrix to rank and say why; validates values (finite, counts non-negative)."""
    if expression not in ("auto", *KINDS):
        raise InputDataError(f"expression={expression!r} is not one of auto, {', '.join(KINDS)}.")
    if layer is not None and use_raw:
        raise InputDataError("pass either a layer or use_raw, not both.")
    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(adata.layers.keys()) or "none"
            raise InputDataError(f"layer '{layer}' not found (available layers: {available}).")
        matrix, var, source = adata.layers[layer], adata.var, f"layers['{layer}']"
    else:
        if use_raw and adata.raw is None:
            raise InputDataError("use_raw was requested but the AnnData has no .raw; drop --use-raw.")
        if use_raw is None and adata.raw is not None:
            use_raw = _x_looks_scaled(adata.X)
        if use_raw:
            matrix, var, source = adata.raw.X, adata.raw.var, ".raw"
        else:
            matrix, var, source = adata.X, adata.var, "X"
    if matrix is None:
        raise InputDataError(f"{source} holds no matrix; pass --layer NAME or --use-raw.")
    csr = _as_csr(matrix)
    if not np.isfinite(csr.data).all():
        bad = int((~np.isfinite(csr.data)).sum())
        raise InputDataError(f"{source} has {bad} non-finite values (NaN/inf); fix or impute them first.")
    kind = detect_kind(csr.data) if expression == "auto" else expression
    claims_counts = expression == "counts" or (layer or "").lower() in _COUNT_LAYER_NAMES
    if claims_counts and csr.data.size and csr.data.min() < 0:
        raise InputDataError(f"{source} should hold counts but has negative values; "
                             "pick the right layer or pass expression='scaled'.")
    chosen = ChosenInput(csr, [str(v) for v in var.index], var, source, kind)
    log.info("cell sentences: ranking %s", chosen.description)
    return chosen


def _x_looks_scaled(x) -> bool:
    """``.X`` with negative values is scaled: rank on ``.raw`` instead (scanpy's convention)."""
    data = x.data if sp.issparse(x) else np.asarray(x)
    return bool(data.size) and float(np.nanmin(data)) < 0


def normalised_expression(matrix: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """The values the inverse model is fitted to and judged on (float32 CSR, zeros stay zero)."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if kind == "counts":
        totals = np.asarray(out.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
        out.data *= np.repeat(scale, np.diff(out.indptr)).astype(np.float32)
        np.log1p(out.data, out=out.data)
    elif kind == "tpm":
        np.log1p(out.data, out=out.data)
    return out
