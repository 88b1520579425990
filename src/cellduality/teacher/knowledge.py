"""What the offline teacher knows: statistics of the *training* cells, in rank space.

Every cell sentence becomes rank weights ``w(g) = 1 / log2(1 + rank)`` (the weights RWJS uses,
:func:`cellduality.rewards.rank_weights`), so "a marker is high in this cell" and "this sentence
is close to that one" are measured the same way. From them:

* :class:`ClassProfiles` -- per label (cell type, sensitivity): how often each gene is in a
  cell's sentence, its mean rank and mean weight, a multinomial naive-Bayes log-probability (the
  classifier behind annotation/sensitivity traces) and a typical ranking (behind generation).
* :class:`PerturbationShifts` -- per perturbation: the mean rank-weight shift of each gene between
  perturbed cells and their paired controls (behind perturbation traces).

Plain numpy over a gene index; fitting is one pass over the cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellduality.rewards import rank_weights


def _gene_index(cells: Sequence[Sequence[str]]) -> dict[str, int]:
    index: dict[str, int] = {}
    for cell in cells:
        for gene in cell:
            index.setdefault(gene, len(index))
    return index


def weight_matrix(cells: Sequence[Sequence[str]], index: dict[str, int]) -> np.ndarray:
    """Cells x genes matrix of rank weights (0 where a gene is absent or unknown)."""
    matrix = np.zeros((len(cells), len(index)), dtype=np.float32)
    for row, cell in enumerate(cells):
        for gene, weight in rank_weights(cell).items():
            col = index.get(gene)
            if col is not None:
                matrix[row, col] = weight
    return matrix


def rank_of(cell: Sequence[str]) -> dict[str, int]:
    """``{gene: 1-based rank}`` (first occurrence)."""
    ranks: dict[str, int] = {}
    for gene in cell:
        ranks.setdefault(gene, len(ranks) + 1)
    return ranks


@dataclass
class ClassProfiles:
    """Per-label gene statistics of the training cells."""

    labels: list[str]
    genes: list[str]
    index: dict[str, int]
    frequency: np.ndarray  # labels x genes: fraction of the label's cells containing the gene
    mean_weight: np.ndarray  # labels x genes
    mean_rank: np.ndarray  # labels x genes: mean rank where present (nan when never present)
    log_prob: np.ndarray  # labels x genes: naive-Bayes log P(gene | label) on rank weights
    length: dict[str, int]  # median sentence length per label
    n_cells: dict[str, int]

    @classmethod
    def fit(cls, cells: Sequence[Sequence[str]], labels: Sequence[str], alpha: float = 0.05) -> ClassProfiles:
        if len(cells) != len(labels) or not cells:
            raise ValueError("need one label per cell and at least one cell")
        index = _gene_index(cells)
        weights = weight_matrix(cells, index)
        names = sorted(set(labels))
        label_arr = np.asarray(labels)
        freq = np.zeros((len(names), len(index)), dtype=np.float32)
        mean_w = np.zeros_like(freq)
        mean_r = np.full_like(freq, np.nan)
        ranks = np.zeros_like(weights)
        ranks[weights > 0] = np.exp2(1.0 / weights[weights > 0]) - 1.0  # invert w = 1 / log2(1 + rank)
        lengths, counts = {}, {}
        for k, name in enumerate(names):
            rows = label_arr == name
            present = weights[rows] > 0
            freq[k] = present.mean(axis=0)
            mean_w[k] = weights[rows].mean(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_r[k] = np.where(present.any(axis=0), ranks[rows].sum(axis=0) / present.sum(axis=0), np.nan)
            lengths[name] = int(np.median([len(c) for c, lab in zip(cells, labels, strict=True) if lab == name]))
            counts[name] = int(rows.sum())
        smoothed = mean_w + alpha * mean_w.mean()
        log_prob = np.log(smoothed / smoothed.sum(axis=1, keepdims=True))
        return cls(names, list(index), index, freq, mean_w, mean_r, log_prob, lengths, counts)

    # ---- classification ------------------------------------------------------------------
    def _cell_vector(self, cell: Sequence[str]) -> np.ndarray:
        return weight_matrix([list(cell)], self.index)[0]

    def scores(self, cell: Sequence[str]) -> np.ndarray:
        """Naive-Bayes log-likelihood of ``cell`` under each label (higher = more likely)."""
        return self.log_prob @ self._cell_vector(cell)

    def evidence(self, cell: Sequence[str], label: str, k: int = 3) -> list[tuple[str, int, float]]:
        """The ``k`` genes of ``cell`` that support ``label`` most against the other labels.

        Returns ``(gene, rank in the cell, contribution)``; only positive contributions.
        """
        c = self.labels.index(label)
        vec = self._cell_vector(cell)
        others = np.delete(self.log_prob, c, axis=0).mean(axis=0) if len(self.labels) > 1 else 0.0
        contribution = vec * (self.log_prob[c] - others)
        ranks = rank_of(cell)
        order = np.argsort(-contribution)
        found = []
        for col in order[:k]:
            if contribution[col] <= 0:
                break
            found.append((self.genes[col], ranks[self.genes[col]], float(contribution[col])))
        return found

    def frequency_of(self, gene: str, label: str) -> tuple[float, float]:
        """Fraction of ``label`` cells containing ``gene`` and the (label-balanced) fraction of the others."""
        col = self.index.get(gene)
        if col is None:
            return 0.0, 0.0
        c = self.labels.index(label)
        others = np.delete(self.frequency[:, col], c)
        return float(self.frequency[c, col]), float(others.mean()) if others.size else 0.0

    def typical_rank(self, gene: str, label: str) -> float | None:
        col = self.index.get(gene)
        if col is None:
            return None
        value = self.mean_rank[self.labels.index(label), col]
        return None if np.isnan(value) else float(value)

    def markers(self, label: str, k: int = 5) -> list[str]:
        """Genes frequent in ``label`` cells and rarer elsewhere (frequency difference)."""
        c = self.labels.index(label)
        others = np.delete(self.frequency, c, axis=0).mean(axis=0) if len(self.labels) > 1 else 0.0
        order = np.argsort(-(self.frequency[c] - others))
        return [self.genes[i] for i in order[:k]]


@dataclass
class PerturbationShifts:
    """Per perturbation: mean rank-weight change of each gene, perturbed minus paired control."""

    perturbations: list[str]
    genes: list[str]
    index: dict[str, int]
    shift: np.ndarray  # perturbations x genes
    n_pairs: dict[str, int]

    @classmethod
    def fit(
        cls, controls: Sequence[Sequence[str]], perturbed: Sequence[Sequence[str]], perturbations: Sequence[str]
    ) -> PerturbationShifts:
        if not (len(controls) == len(perturbed) == len(perturbations)) or not controls:
            raise ValueError("need one control and one perturbation per perturbed cell")
        index = _gene_index([*controls, *perturbed])
        delta = weight_matrix(perturbed, index) - weight_matrix(controls, index)
        names = sorted(set(perturbations))
        arr = np.asarray(perturbations)
        shift = np.stack([delta[arr == name].mean(axis=0) for name in names])
        return cls(names, list(index), index, shift, {n: int((arr == n).sum()) for n in names})

    def vector(self, perturbation: str) -> np.ndarray:
        if perturbation not in self.perturbations:
            return np.zeros(len(self.genes), dtype=np.float32)
        return self.shift[self.perturbations.index(perturbation)]

    def top_moved(self, perturbation: str, k: int = 3) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The ``k`` genes the perturbation raises most and the ``k`` it lowers most."""
        vec = self.vector(perturbation)
        order = np.argsort(vec)
        up = [(self.genes[i], float(vec[i])) for i in order[::-1][:k] if vec[i] > 0]
        down = [(self.genes[i], float(vec[i])) for i in order[:k] if vec[i] < 0]
        return up, down

    def scores(self, control: Sequence[str], perturbed: Sequence[str]) -> np.ndarray:
        """How well each perturbation's shift explains ``perturbed - control`` (cosine similarity)."""
        delta = weight_matrix([list(perturbed)], self.index)[0] - weight_matrix([list(control)], self.index)[0]
        norms = np.linalg.norm(self.shift, axis=1) * (np.linalg.norm(delta) + 1e-9) + 1e-9
        return (self.shift @ delta) / norms
