"""``cd.tl``: the scverse-style tools namespace (``import cellduality as cd``).

``cd.tl.annotate(adata, model, key_added="cellduality", copy=False)`` and ``cd.tl.adapt(adata,
model, out)``. Each entry is a thin layer over the function that does the work, so the notebook
API and the ``cellduality`` command share one implementation. Conventions follow scanpy's
``tl``: ``copy=False`` writes into ``adata`` and returns ``None``; ``copy=True`` returns a new
object and leaves ``adata`` alone; results go under ``key_added`` (``.obs[f"{key_added}_…"]``,
run parameters in ``.uns[key_added]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellduality.adaptation import adapt

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["adapt", "annotate"]


def annotate(adata: AnnData, model: Any, *, key_added: str = "cellduality", copy: bool = False,
             **options: Any) -> AnnData | None:
    """Cell types for every cell of ``adata`` (:func:`cellduality.inference.annotate`; ``options`` are its).

    Writes ``.obs[f"{key_added}_cell_type"]``, ``_confidence`` (and ``_reasoning``,
    ``_faithfulness``, ... when asked) and ``.uns[key_added]``. Columns of an earlier run under
    another key are never touched.
    """
    from cellduality.errors import CellDualityError
    from cellduality.inference.predict import KEY
    from cellduality.inference.predict import annotate as run_annotate

    if not key_added or not str(key_added).isidentifier():
        raise CellDualityError(f"key_added must be a plain name like 'cellduality', not {key_added!r}.")
    target = adata.copy() if copy else adata
    if key_added == KEY:
        run_annotate(target, model, copy=False, **options)
        return target if copy else None
    # the inference code writes under KEY: run it on a scratch copy, then move the results
    scratch = run_annotate(target, model, copy=True, **options)
    prefix = f"{KEY}_"
    for column in scratch.obs.columns:
        if column.startswith(prefix) and column not in target.obs.columns:
            target.obs[f"{key_added}_{column[len(prefix):]}"] = scratch.obs[column].to_numpy()
    if KEY in scratch.uns:
        target.uns[key_added] = scratch.uns[KEY]
    return target if copy else None
