"""Inference on your own cells with a trained CellDuality model (AnnData in, AnnData out)."""

from cellduality.inference.model import CellDualityModel
from cellduality.inference.predict import (
    annotate,
    duality_rerank,
    gene_overlap,
    generate_cells,
    perturb,
    predict_labels,
    predict_sensitivity,
)

__all__ = [
    "CellDualityModel",
    "annotate",
    "duality_rerank",
    "gene_overlap",
    "generate_cells",
    "perturb",
    "predict_labels",
    "predict_sensitivity",
]
