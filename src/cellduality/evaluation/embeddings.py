"""Cell sentences -> expression -> a shared embedding in which generated and real cells are compared.

Generated sentences go through the dataset's inverse model (``InverseModel.to_expression``), the
same path as the real cells they are compared with, so neither side gets information the other
lacks. The embedding is pluggable (paper: scGPT): pass any object with ``fit(X)``/``transform(X)``
(fitted on real cells only), or any callable ``X -> (cells × dims)`` used as is (e.g. a frozen
foundation model). The default is a PCA fitted on real cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cellduality.errors import CellDualityError


@runtime_checkable
class Embedding(Protocol):
    """Anything fitted on real expression (cells × genes) and applied to real and generated cells."""

    def fit(self, expression: np.ndarray) -> Any: ...

    def transform(self, expression: np.ndarray) -> np.ndarray: ...


class PCAEmbedding:
    """PCA (``n_components``, default 50) fitted on real cells; ``log1p`` first when counts look raw."""

    def __init__(self, n_components: int = 50, seed: int = 0) -> None:
        self.n_components = n_components
        self.seed = seed
        self._pca = None
        self._log = False

    def _prepare(self, expression: np.ndarray) -> np.ndarray:
        x = np.asarray(expression, dtype=np.float64)
        return np.log1p(np.clip(x, 0, None)) if self._log else x

    def fit(self, expression: np.ndarray) -> PCAEmbedding:
        from sklearn.decomposition import PCA

        x = np.asarray(expression, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise CellDualityError(f"the embedding needs at least two real cells to fit, got {len(x)}.")
        self._log = bool(x.size and x.max() > 50)  # raw counts: compress before PCA
        x = self._prepare(x)
        k = max(1, min(self.n_components, x.shape[0] - 1, x.shape[1]))
        self._pca = PCA(n_components=k, random_state=self.seed).fit(x)
        return self

    def transform(self, expression: np.ndarray) -> np.ndarray:
        if self._pca is None:
            raise RuntimeError("PCAEmbedding.transform called before fit")
        x = self._prepare(expression)
        if len(x) == 0:
            return np.zeros((0, self._pca.n_components_))
        return self._pca.transform(x)


class FixedEmbedding:
    """Wraps a plain callable (a pretrained encoder): nothing to fit."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn

    def fit(self, expression: np.ndarray) -> FixedEmbedding:
        return self

    def transform(self, expression: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(expression), dtype=np.float64)


def resolve_embedding(embedding: Embedding | Callable[[np.ndarray], np.ndarray] | None) -> Embedding:
    """``None`` -> a fresh :class:`PCAEmbedding`; a bare callable -> :class:`FixedEmbedding`."""
    if embedding is None:
        return PCAEmbedding()
    if isinstance(embedding, Embedding):
        return embedding
    if callable(embedding):
        return FixedEmbedding(embedding)
    raise CellDualityError(f"embedding must have fit/transform or be callable, got {type(embedding).__name__}.")


class SentenceEmbedder:
    """Sentence -> expression (inverse model) -> embedding, fitted once on real cells.

    ``None`` or empty sentences (malformed model output) are not embedded: :meth:`embed` returns
    the embedding of the valid ones and a boolean mask saying which they were.
    """

    def __init__(self, inverse: Any, embedding: Embedding | Callable | None = None) -> None:
        if inverse is None or not hasattr(inverse, "to_expression"):
            raise CellDualityError(
                "generation metrics need the dataset's inverse model (inverse.json); rebuild the tasks "
                "folder with `cellduality tasks build` from a sentences folder that has one."
            )
        self.inverse = inverse
        self.embedding = resolve_embedding(embedding)

    def expression(self, sentences: Sequence[Sequence[str] | str]) -> np.ndarray:
        if not len(sentences):
            return np.zeros((0, len(self.inverse.genes)), dtype=np.float64)
        return np.asarray(self.inverse.to_expression(list(sentences)), dtype=np.float64)

    def fit(self, real_sentences: Sequence[Sequence[str] | str]) -> SentenceEmbedder:
        self.embedding.fit(self.expression(real_sentences))
        return self

    def transform_expression(self, expression: np.ndarray) -> np.ndarray:
        return np.asarray(self.embedding.transform(np.asarray(expression, dtype=np.float64)), dtype=np.float64)

    def embed(self, sentences: Sequence[Sequence[str] | str | None]) -> tuple[np.ndarray, np.ndarray]:
        valid = np.array([bool(s) for s in sentences], dtype=bool)
        kept = [s for s, ok in zip(sentences, valid, strict=True) if ok]
        return self.transform_expression(self.expression(kept)), valid
