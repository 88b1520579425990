"""The paper's evaluation metrics as pure functions (paper §4.1, plus two diagnostics it lacks).

* classification: :func:`accuracy`, :func:`macro_f1` -- malformed outputs (``None``) count as
  wrong and are never dropped, so a model cannot raise its score by refusing to answer;
* distributions of cells in an embedding (cells × dims): :func:`scfid`, :func:`mmd`,
  :func:`wasserstein`, :func:`gw_distance`, :func:`knn_accuracy`, and
  :func:`generation_metrics`, which computes them all from one set of distance matrices;
* :func:`reward_validity_auc` (does the duality reward separate right from wrong answers?) and
  :func:`gap_closed` ((duality − SFT) / (oracle − SFT)).

Undefined cases return ``nan`` (documented per function) instead of raising deep inside
scikit-learn or POT; inputs that can only be a caller's mistake (NaN in an embedding, mismatched
lengths or dimensions) raise :class:`~cellduality.errors.CellDualityError` with one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellduality.errors import CellDualityError

MALFORMED = "<malformed>"
"""The class a ``None`` (unparseable) prediction is mapped to: never equal to a real label."""
KNN_KS = (3, 5, 10, 25)
"""The neighbour counts of Cell2Sentence's k-NN accuracy (paper Table 5)."""
MMD_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Multiples of the median pairwise distance used as RBF bandwidths in :func:`mmd`."""
NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _labels(y_true: Sequence[Any], y_pred: Sequence[Any | None]) -> tuple[list[str], list[str]]:
    if len(y_true) != len(y_pred):
        raise CellDualityError(f"{len(y_true)} true labels but {len(y_pred)} predictions; they must pair up.")
    truth = [str(t) for t in y_true]
    pred = [MALFORMED if p is None else str(p) for p in y_pred]
    return truth, pred


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any | None]) -> float:
    """Fraction of predictions equal to the truth; ``None`` (malformed) is wrong. Empty -> nan."""
    from sklearn.metrics import accuracy_score

    truth, pred = _labels(y_true, y_pred)
    return float(accuracy_score(truth, pred)) if truth else NAN


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any | None], labels: Sequence[str] | None = None) -> float:
    """Unweighted mean of per-class F1 over the true classes (or ``labels``). Empty -> nan.

    Averaging over the *true* classes (not over every predicted string) keeps the malformed
    sentinel and hallucinated labels from adding classes of their own: they still cost recall of
    the class they should have been and precision of nothing.
    """
    from sklearn.metrics import f1_score

    truth, pred = _labels(y_true, y_pred)
    if not truth:
        return NAN
    classes = sorted(set(truth)) if labels is None else [str(label) for label in labels]
    return float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0))


def confusion(y_true: Sequence[Any], y_pred: Sequence[Any | None], labels: Sequence[str] | None = None):
    """Confusion matrix as a DataFrame (rows: truth, columns: prediction incl. ``<malformed>``)."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    truth, pred = _labels(y_true, y_pred)
    rows = sorted(set(truth)) if labels is None else [str(label) for label in labels]
    cols = rows + sorted(set(pred) - set(rows))
    if not truth:
        return pd.DataFrame(np.zeros((len(rows), len(cols)), dtype=int), index=rows, columns=cols)
    matrix = confusion_matrix(truth, pred, labels=cols)[: len(rows)]
    return pd.DataFrame(matrix, index=rows, columns=cols)


# --------------------------------------------------------------------------------------------
# Distances between cell populations
# --------------------------------------------------------------------------------------------


def as_embedding(values: Any, name: str, dims: int | None = None) -> np.ndarray:
    """A float64 (cells × dims) matrix; NaN/inf or a wrong shape is the caller's one-line error."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, dims or 0)
    if array.ndim != 2:
        raise CellDualityError(f"{name} embedding must be a 2-D (cells x dims) array, got shape {array.shape}.")
    if dims is not None and array.shape[0] and array.shape[1] != dims:
        raise CellDualityError(f"{name} embedding has {array.shape[1]} dims but the other set has {dims}.")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise CellDualityError(
            f"{name} embedding has {int(bad.sum())} of {len(array)} rows with NaN or inf; "
            "drop those cells or fix the embedding before computing metrics."
        )
    return array


def _pair(real: Any, generated: Any) -> tuple[np.ndarray, np.ndarray]:
    x = as_embedding(real, "real")
    y = as_embedding(generated, "generated", dims=x.shape[1] if len(x) else None)
    if len(x) and len(y) and x.shape[1] != y.shape[1]:
        raise CellDualityError(f"real embedding has {x.shape[1]} dims but generated has {y.shape[1]}.")
    return x, y


@dataclass
class Geometry:
    """Euclidean distance matrices of two point clouds, computed once and shared by all metrics.

    ``real`` is ``X`` (n × d), ``generated`` is ``Y`` (m × d); ``dxx`` (n × n), ``dyy`` (m × m)
    and ``dxy`` (n × m) are float64 Euclidean distances.
    """

    real: np.ndarray
    generated: np.ndarray
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, real: Any, generated: Any) -> Geometry:
        x, y = _pair(real, generated)
        return cls(x, y)

    def _dist(self, key: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if key not in self._cache:
            from scipy.spatial.distance import cdist

            self._cache[key] = cdist(a, b)
        return self._cache[key]

    @property
    def dxx(self) -> np.ndarray:
        return self._dist("xx", self.real, self.real)

    @property
    def dyy(self) -> np.ndarray:
        return self._dist("yy", self.generated, self.generated)

    @property
    def dxy(self) -> np.ndarray:
        return self._dist("xy", self.real, self.generated)

    @property
    def empty(self) -> bool:
        return len(self.real) == 0 or len(self.generated) == 0


def _geometry(real: Any, generated: Any) -> Geometry:
    return real if isinstance(real, Geometry) else Geometry.of(real, generated)


def scfid(real: Any, generated: Any = None) -> float:
    """Fréchet distance between Gaussians fitted to two embeddings (FID on cells, "scFID").

    ``‖μ_x − μ_y‖² + Tr(Σ_x + Σ_y − 2 (Σ_x^½ Σ_y Σ_x^½)^½)``, with sample covariances
    (``ddof=1``). The matrix square root goes through symmetric eigen-decompositions, which is
    exact for PSD covariances and never returns complex values. Needs at least two cells per set
    (a covariance); otherwise ``nan``.
    """
    x, y = (real.real, real.generated) if isinstance(real, Geometry) else _pair(real, generated)
    if len(x) < 2 or len(y) < 2:
        return NAN
    mu = x.mean(axis=0) - y.mean(axis=0)
    cov_x = np.atleast_2d(np.cov(x, rowvar=False))
    cov_y = np.atleast_2d(np.cov(y, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_x)
    root_x = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_x @ cov_y @ root_x)
    trace_root = float(np.sqrt(np.clip(cross, 0, None)).sum())
    value = float(mu @ mu + np.trace(cov_x) + np.trace(cov_y) - 2.0 * trace_root)
    return max(value, 0.0)


def mmd(real: Any, generated: Any = None, *, scales: Sequence[float] = MMD_SCALES) -> float:
    """Squared maximum mean discrepancy with a mixture of RBF kernels (biased V-statistic).

    Bandwidths ``h = s · median`` for each ``s`` in ``scales``, where ``median`` is the median
    Euclidean distance between distinct cells of the pooled sample (median heuristic); the kernel
    is ``exp(−d² / (2h²))`` and the result is the mean over bandwidths of
    ``mean K_xx + mean K_yy − 2 mean K_xy``. The biased estimator is ``0`` for identical sets and
    never negative. Empty set -> ``nan``.
    """
    geo = _geometry(real, generated)
    if geo.empty:
        return NAN
    dxx, dyy, dxy = geo.dxx, geo.dyy, geo.dxy
    # Each unordered pair once; the full pooled matrix holds every pair twice, so same median.
    pooled = np.concatenate([dxx[np.triu(np.ones(dxx.shape, bool), 1)],
                             dyy[np.triu(np.ones(dyy.shape, bool), 1)], dxy.ravel()])
    median = float(np.median(pooled)) if pooled.size else 0.0
    del pooled
    if median <= 0:  # every cell identical: the two sets coincide exactly
        return 0.0
    total = 0.0
    for scale in scales:
        gamma = 1.0 / (2.0 * (scale * median) ** 2)
        kxx, kyy, kxy = (_mean_rbf(d, gamma) for d in (dxx, dyy, dxy))
        total += kxx + kyy - 2.0 * kxy
    return max(float(total / len(scales)), 0.0)


def _mean_rbf(distances: np.ndarray, gamma: float) -> float:
    """``mean(exp(−gamma · d²))`` in one scratch buffer (these matrices hold millions of cells)."""
    buffer = np.multiply(distances, distances)
    buffer *= -gamma
    np.exp(buffer, out=buffer)
    return float(buffer.mean())


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def transport_plan(geo: Geometry, *, max_iter: int = 10_000_000) -> np.ndarray:
    """The exact optimal transport plan between the clouds (Euclidean cost), cached on ``geo``."""
    import ot

    if "plan" not in geo._cache:
        n, m = geo.dxy.shape
        plan, log = ot.emd(_uniform(n), _uniform(m), geo.dxy, numItermax=max_iter, log=True)
        if log.get("warning"):
            raise CellDualityError(f"exact optimal transport did not converge ({log['warning']}).")
        geo._cache["plan"] = plan
    return geo._cache["plan"]


def wasserstein(real: Any, generated: Any = None) -> float:
    """Exact 1-Wasserstein distance (earth mover's distance) between the two point clouds.

    Each cell carries mass ``1/n`` (``1/m``); the ground cost is the Euclidean distance, and
    the optimal transport is solved exactly by POT's network simplex (``ot.emd``) with its
    iteration cap raised so it does not stop early on thousands of cells (POT's default cap of
    100,000 pivots does, silently apart from a warning). In one dimension this equals
    ``scipy.stats.wasserstein_distance``. Empty set -> ``nan``.
    """
    geo = _geometry(real, generated)
    if geo.empty:
        return NAN
    return float(np.sum(transport_plan(geo) * geo.dxy))


GW_INITS = ("best", "product")


def gw_distance(
    real: Any, generated: Any = None, *, init: str = "product", max_iter: int = 1000, tol: float = 1e-9
) -> float:
    """Gromov-Wasserstein discrepancy between the two clouds' Euclidean distance matrices.

    ``min_T Σ (D_x[i,k] − D_y[j,l])² T_ij T_kl`` over couplings of uniform weights: the value of
    POT's ``gromov_wasserstein2`` with the square loss, solved by the same conditional-gradient
    method (``ot.optim``) with the same exact line search and stopping rule (relative or absolute
    change of the loss < ``tol``). The problem is non-convex, so the value is that of a local
    minimum and depends on where the solver starts:

    * ``init="product"`` (default): POT's default start ``T0 = p qᵀ``; the same iterates, hence
      the same value, as ``ot.gromov.gromov_wasserstein2``.
    * ``init="best"``: start from whichever has the lower GW loss of the first vertex of the
      product path and the exact Wasserstein plan between the clouds (they share an embedding).
      Often fewer iterations, but a different start can end in a different local minimum
      (measured: from 0.6% higher to 2.8% lower than the default), so it is opt-in.

    Faster than ``gromov_wasserstein2`` without changing any iterate: at ``p qᵀ`` the gradient
    is ``a_i + b_j − u_i w_j``, so the first linear sub-problem is a 1-D transport between ``u``
    and ``w`` (``ot.emd_1d``); each later sub-problem returns a sparse EMD vertex, so
    ``D_x T D_y`` for it costs one dense product instead of two, and the next gradient follows
    from the line search. ``benchmarks/bench_metrics.py`` compares both inits with POT.
    Empty set -> ``nan``.
    """
    if init not in GW_INITS:
        raise CellDualityError(f"Unknown GW init '{init}'; choose one of: {', '.join(GW_INITS)}.")
    geo = _geometry(real, generated)
    if geo.empty:
        return NAN
    return _GromovSolver(geo.dxx, geo.dyy).solve(
        transport_plan(geo) if init == "best" else None, max_iter=max_iter, tol=tol
    )


class _GromovSolver:
    """Conditional gradient for square-loss GW with incremental ``C1 T (2 C2)ᵀ`` products."""

    def __init__(self, c1: np.ndarray, c2: np.ndarray) -> None:
        self.c1, self.two_c2 = c1, 2.0 * c2
        n, m = len(c1), len(c2)
        self.p, self.q = _uniform(n), _uniform(m)
        # Square loss L(a, b) = a² + b² − 2ab: gradient 2 (constC − C1 T (2 C2)ᵀ), as POT's init_matrix.
        self.const = ((c1**2) @ self.p)[:, None] + ((c2**2) @ self.q)[None, :]
        self.u, self.w = c1 @ self.p, self.two_c2 @ self.q

    def cross(self, plan: np.ndarray) -> np.ndarray:
        """``C1 T (2 C2)ᵀ``; one dense product when ``T`` is a sparse vertex."""
        from scipy import sparse

        n, m = plan.shape
        if np.count_nonzero(plan) <= n + m:
            return self.c1 @ (sparse.csr_matrix(plan) @ self.two_c2.T)
        return self.c1 @ plan @ self.two_c2.T

    def loss(self, plan: np.ndarray, cross: np.ndarray) -> float:
        return float(np.sum((self.const - cross) * plan))

    def first_vertex(self) -> np.ndarray:
        """The linear minimiser at ``p qᵀ``: min Σ (a_i + b_j − u_i w_j) T_ij = 1-D OT of u to w."""
        import ot

        return ot.emd_1d(self.u, self.w, self.p, self.q, metric="sqeuclidean", dense=True)

    def solve(self, candidate: np.ndarray | None, *, max_iter: int, tol: float) -> float:
        import ot

        state: dict[str, Any] = {"cross": np.outer(self.u, self.w), "first": candidate is None}
        start = None
        if candidate is not None:  # best of the product path's first vertex and the candidate
            options = [(plan, self.cross(plan)) for plan in (self.first_vertex(), candidate)]
            start, state["cross"] = min(options, key=lambda pc: self.loss(*pc))

        def loss(plan: np.ndarray) -> float:  # called once, for the initial cost
            return self.loss(plan, state["cross"])

        def grad(plan: np.ndarray) -> np.ndarray:  # called once; later gradients come from the line search
            return 2.0 * (self.const - state["cross"])

        def lp_solver(a: np.ndarray, b: np.ndarray, cost: np.ndarray, **kwargs: Any):
            if state.pop("first", False):
                return self.first_vertex(), {}
            return ot.emd(a, b, cost, numItermax=10_000_000, log=True)

        def line_search(cost, plan, delta, grad_m, cost_plan, grad_plan, **kwargs):
            cross_delta = self.cross(plan + delta) - state["cross"]
            a = -float(np.sum(cross_delta * delta))
            b = float(np.sum(grad_plan * delta))
            alpha = ot.optim.solve_1d_linesearch_quad(a, b)
            state["cross"] = state["cross"] + alpha * cross_delta
            return alpha, 1, cost_plan + a * alpha**2 + b * alpha, 2.0 * (self.const - state["cross"])

        _, log = ot.optim.generic_conditional_gradient(
            self.p, self.q, 0.0, loss, grad, 1.0, None, lp_solver, line_search, G0=start,
            numItermax=max_iter, stopThr=tol, stopThr2=tol, log=True,
        )
        return max(float(log["loss"][-1]), 0.0)


def knn_accuracy(
    real: Any,
    real_labels: Sequence[Any],
    generated: Any,
    generated_labels: Sequence[Any],
    k: int = 5,
    *,
    geometry: Geometry | None = None,
) -> float:
    """Accuracy of a k-NN classifier fitted on real cells at naming generated cells' conditions.

    Cell2Sentence's conditional-generation metric: ``KNeighborsClassifier(k)`` (uniform votes,
    Euclidean) is fitted on ``real`` with ``real_labels`` and predicts the label each generated
    cell was asked to be. ``nan`` when there are no generated cells or fewer real cells than ``k``
    (the classifier is undefined there). Pass ``geometry`` to reuse precomputed distances.
    """
    from sklearn.neighbors import KNeighborsClassifier

    geo = geometry or Geometry.of(real, generated)
    if len(real_labels) != len(geo.real) or len(generated_labels) != len(geo.generated):
        raise CellDualityError("knn_accuracy: each cell needs exactly one label (lengths differ).")
    if len(geo.generated) == 0 or len(geo.real) < k:
        return NAN
    model = KNeighborsClassifier(n_neighbors=k, metric="precomputed").fit(geo.dxx, np.asarray(real_labels, dtype=str))
    predicted = model.predict(geo.dxy.T)
    return float(np.mean(predicted == np.asarray(generated_labels, dtype=str)))


def generation_metrics(
    real: Any,
    generated: Any,
    real_labels: Sequence[Any] | None = None,
    generated_labels: Sequence[Any] | None = None,
    *,
    ks: Sequence[int] = KNN_KS,
    gw: bool = True,
) -> dict[str, float]:
    """scFID, MMD, Wasserstein, GW and (with labels) k-NN accuracy at each ``k``, sharing distances.

    Keys: ``scfid``, ``mmd``, ``wasserstein``, ``gw`` and ``knn@{k}``. The distance matrices are
    computed once, which is what makes 2,000 × 2,000 cells take seconds.
    """
    geo = Geometry.of(real, generated)
    out = {"scfid": scfid(geo), "mmd": mmd(geo), "wasserstein": wasserstein(geo)}
    if gw:
        out["gw"] = gw_distance(geo)
    if real_labels is not None and generated_labels is not None:
        for k in ks:
            out[f"knn@{k}"] = knn_accuracy(geo.real, real_labels, geo.generated, generated_labels, k, geometry=geo)
    return out


# --------------------------------------------------------------------------------------------
# Diagnostics the paper lacks
# --------------------------------------------------------------------------------------------


def reward_validity_auc(rewards: Sequence[float], correct: Sequence[bool]) -> float:
    """ROC AUC of the reward at telling correct (1) from incorrect (0) primal outputs.

    0.5 means the reward carries no signal about correctness; 1.0 means it ranks every correct
    output above every incorrect one. ``nan`` when only one class is present (AUC undefined).
    """
    from sklearn.metrics import roc_auc_score

    if len(rewards) != len(correct):
        raise CellDualityError(f"{len(rewards)} rewards but {len(correct)} correctness flags.")
    score = np.asarray(rewards, dtype=np.float64)
    label = np.asarray(correct, dtype=bool)
    keep = np.isfinite(score)
    score, label = score[keep], label[keep]
    if label.size == 0 or label.all() or not label.any():
        return NAN
    return float(roc_auc_score(label, score))


LOWER_IS_BETTER = frozenset({"scfid", "mmd", "wasserstein", "gw", "malformed_rate"})


def higher_is_better(metric: str) -> bool:
    """Direction of a metric name (``mmd``, ``scfid/STAT1`` ... are lower-is-better)."""
    return metric.split("/")[0].split("@")[0] not in LOWER_IS_BETTER


def gap_closed(sft: float, duality: float, oracle: float, higher_is_better: bool | None = None) -> float:
    """``(duality − SFT) / (oracle − SFT)``: the share of the oracle's gain that duality RL recovers.

    The ratio is the same for higher- and lower-is-better metrics (numerator and denominator
    change sign together). 1 = as good as the oracle, 0 = no better than SFT, negative = worse
    than SFT, > 1 = better than the oracle. ``nan`` when the oracle did not move the metric
    (``|oracle − SFT|`` below 1e-12) or any input is missing, and -- when the metric's direction
    is given -- when the oracle did *not improve* on SFT: there is then no gap to close, and a
    ratio of two regressions would read as progress.
    """
    values = [float(v) if v is not None else NAN for v in (sft, duality, oracle)]
    if not all(math.isfinite(v) for v in values):
        return NAN
    sft_v, dual_v, oracle_v = values
    denominator = oracle_v - sft_v
    if abs(denominator) < 1e-12:
        return NAN
    if higher_is_better is not None and (denominator > 0) != higher_is_better:
        return NAN
    return (dual_v - sft_v) / denominator
