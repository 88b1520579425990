"""``cd.tl``: the scverse-style tools namespace (``import cellduality as cd``).

``cd.tl.predict(adata, model, task=..., key_added="cellduality", copy=False)`` for any task the
model learned, ``cd.tl.annotate`` (its ``task="annotation"``) and ``cd.tl.adapt(adata, model, out)``.
Each entry is a thin layer over the function that does the work, so the notebook API and the
``cellduality`` command share one implementation. Conventions follow scanpy's
``tl``: ``copy=False`` writes into ``adata`` and returns ``None``; ``copy=True`` returns a new
object and leaves ``adata`` alone; results go under ``key_added`` (``.obs[f"{key_added}_…"]``,
run parameters in ``.uns[key_added]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellduality.adaptation import adapt

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["adapt", "annotate", "predict"]


def predict(adata: AnnData, model: Any, task: str = "annotation", *, key_added: str = "cellduality",
            copy: bool = False, **task_inputs: Any) -> AnnData | None:
    """Run any task of ``model`` on every cell of ``adata`` (:func:`cellduality.inference.generic.predict`).

    ``task_inputs``: what the task needs besides the cells (``drug="PLX4720"`` for sensitivity,
    ``perturbation="knockout of STAT1"`` for perturbation, ``cell_type=adata.obs["bulk_labels"]`` for
    generation: one value, or one per cell) and the run options (``method``, ``explain``,
    ``batch_size``, ``temperature``, sentence options, ...). Writes ``.obs[f"{key_added}_…"]``
    (a label task: ``_<prediction>``, ``_confidence``; a generative one: ``_<prediction>_sentence``,
    ``_dual_…``, ``_consistent`` and ``.obsm[f"{key_added}_<prediction>"]``) and the run parameters
    in ``.uns[key_added][task]``. Nothing is dispatched on the task's name: the task declares it.
    """
    from cellduality.errors import CellDualityError
    from cellduality.inference.generic import predict as run_predict

    if not key_added or not str(key_added).isidentifier():
        raise CellDualityError(f"key_added must be a plain name like 'cellduality', not {key_added!r}.")
    out = run_predict(adata, model, task, key=str(key_added), copy=copy, **task_inputs)
    return out if copy else None


def annotate(adata: AnnData, model: Any, *, key_added: str = "cellduality", copy: bool = False,
             **options: Any) -> AnnData | None:
    """Cell types for every cell of ``adata``: :func:`predict` with ``task="annotation"``
    (``options`` as in :func:`cellduality.inference.annotate`).

    Writes ``.obs[f"{key_added}_cell_type"]``, ``_confidence`` (and ``_reasoning``,
    ``_faithfulness``, ... when asked) and ``.uns[key_added]``. Columns of an earlier run under
    another key are never touched.
    """
    return predict(adata, model, "annotation", key_added=key_added, copy=copy, **options)
