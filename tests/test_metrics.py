"""Metrics against independent computations and known answers, and their bad-input behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cellduality.errors import CellDualityError
from cellduality.evaluation import metrics as M

RNG = np.random.default_rng(0)


def test_accuracy_and_f1_count_malformed_as_wrong():
    truth = ["B", "B", "T", "T"]
    pred = ["B", None, "T", "NK"]
    assert M.accuracy(truth, pred) == 0.5
    # per true class: B: P=1, R=.5 -> F1=2/3; T: P=1, R=.5 -> 2/3 (malformed / NK add no classes)
    assert M.macro_f1(truth, pred) == pytest.approx(2 / 3)
    assert M.accuracy(truth, [None] * 4) == 0.0 and M.macro_f1(truth, [None] * 4) == 0.0
    assert math.isnan(M.accuracy([], [])) and math.isnan(M.macro_f1([], []))
    with pytest.raises(CellDualityError):
        M.accuracy(["a"], [])
    frame = M.confusion(truth, pred)
    assert list(frame.columns) == ["B", "T", M.MALFORMED, "NK"] and frame.values.sum() == 4


def test_scfid_identical_zero_and_gaussian_closed_form():
    x = RNG.normal(size=(500, 4))
    assert M.scfid(x, x) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, mean shifted by d: Fréchet distance is exactly |d|^2 (with sample moments).
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    assert M.scfid(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)
    # Diagonal covariances: sum (mu diff)^2 + sum (s1 - s2)^2 over std devs.
    a = RNG.normal(size=(20000, 3)) * [1.0, 2.0, 3.0]
    b = RNG.normal(size=(20000, 3)) * [2.0, 2.0, 1.0] + 1.0
    sa, sb = a.std(axis=0, ddof=1), b.std(axis=0, ddof=1)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum((sa - sb) ** 2)
    assert M.scfid(a, b) == pytest.approx(expected, rel=0.02)


def test_mmd_zero_for_same_set_and_grows_with_shift():
    x = RNG.normal(size=(300, 5))
    assert M.mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    near, far = M.mmd(x, x + 0.2), M.mmd(x, x + 2.0)
    assert 0 < near < far


def test_wasserstein_matches_scipy_in_1d():
    from scipy.stats import wasserstein_distance

    a, b = RNG.normal(size=200), RNG.normal(1.0, 2.0, size=150)
    assert M.wasserstein(a[:, None], b[:, None]) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)


def test_gw_rotation_invariant_and_matches_pot():
    import ot
    from scipy.spatial.distance import cdist

    x = RNG.normal(size=(150, 6)) * np.arange(1, 7)
    q, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    assert M.gw_distance(x, x @ q + 5.0) == pytest.approx(0.0, abs=1e-9)
    y = RNG.normal(size=(120, 6)) * 2
    reference = ot.gromov.gromov_wasserstein2(cdist(x, x), cdist(y, y), np.full(150, 1 / 150), np.full(120, 1 / 120))
    assert M.gw_distance(x, y, init="product") == pytest.approx(float(reference), rel=1e-6)
    assert M.gw_distance(x, y) == pytest.approx(float(reference), rel=1e-6)
    assert M.gw_distance(x, x @ q, init="best") == pytest.approx(0.0, abs=1e-9)


def test_knn_accuracy_equals_sklearn_on_held_out_real_cells():
    from sklearn.neighbors import KNeighborsClassifier

    centers = RNG.normal(0, 1.0, (4, 8))
    labels = RNG.integers(0, 4, 600)
    cells = centers[labels] + RNG.normal(size=(600, 8))
    fit, held = slice(0, 400), slice(400, 600)
    for k in M.KNN_KS:
        expected = KNeighborsClassifier(n_neighbors=k).fit(cells[fit], labels[fit]).score(cells[held], labels[held])
        assert M.knn_accuracy(cells[fit], labels[fit], cells[held], labels[held], k) == pytest.approx(expected)


def test_generation_metrics_share_one_geometry():
    x, y = RNG.normal(size=(80, 3)), RNG.normal(0.5, 1, size=(60, 3))
    lx, ly = RNG.integers(0, 2, 80), RNG.integers(0, 2, 60)
    out = M.generation_metrics(x, y, lx, ly)
    assert out["mmd"] == pytest.approx(M.mmd(x, y)) and out["gw"] == pytest.approx(M.gw_distance(x, y))
    assert out["knn@5"] == pytest.approx(M.knn_accuracy(x, lx, y, ly, 5))


def test_reward_validity_and_gap_closed():
    assert M.reward_validity_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert M.reward_validity_auc([0.1, 0.9], [True, False]) == 0.0
    assert math.isnan(M.reward_validity_auc([0.1, 0.9], [True, True]))  # one class: undefined
    assert math.isnan(M.reward_validity_auc([], []))
    assert M.gap_closed(0.80, 0.85, 0.90) == pytest.approx(0.5)
    assert M.gap_closed(0.045, 0.038, 0.025) == pytest.approx(0.35)  # lower-is-better (paper scFID)
    assert math.isnan(M.gap_closed(0.8, 0.9, 0.8)) and math.isnan(M.gap_closed(None, 0.9, 1.0))
    # an oracle that got worse than SFT leaves no gap to close (GW: lower is better)
    assert math.isnan(M.gap_closed(189.8, 201.4, 237.7, higher_is_better=False))
    assert M.gap_closed(0.045, 0.038, 0.025, higher_is_better=False) == pytest.approx(0.35)
    assert not M.higher_is_better("scfid/STAT1") and M.higher_is_better("knn@3")


@pytest.mark.parametrize("fn", [M.scfid, M.mmd, M.wasserstein, M.gw_distance])
def test_empty_and_tiny_sets_give_defined_results(fn):
    x = RNG.normal(size=(30, 4))
    assert math.isnan(fn(x, np.zeros((0, 4))))
    assert math.isnan(fn(np.zeros((0, 4)), x))
    value = fn(x, x[:1])  # one generated cell
    assert math.isnan(value) if fn is M.scfid else value >= 0


def test_bad_inputs_raise_one_line_errors():
    x = RNG.normal(size=(30, 4))
    bad = x.copy()
    bad[3, 1] = np.nan
    for fn in (M.scfid, M.mmd, M.wasserstein, M.gw_distance):
        with pytest.raises(CellDualityError, match="NaN") as err:
            fn(x, bad)
        assert "\n" not in str(err.value)
    with pytest.raises(CellDualityError, match="dims"):
        M.mmd(x, x[:, :3])
    with pytest.raises(CellDualityError):
        M.gw_distance(x, x, init="nope")


def test_knn_fewer_cells_than_k_and_one_class():
    x = RNG.normal(size=(4, 3))
    assert math.isnan(M.knn_accuracy(x, list("abab"), x, list("abab"), k=5))
    assert math.isnan(M.knn_accuracy(x, list("abab"), np.zeros((0, 3)), [], k=3))
    assert M.knn_accuracy(x, ["a"] * 4, x, ["a"] * 4, k=3) == 1.0  # one class: every vote is right
    with pytest.raises(CellDualityError):
        M.knn_accuracy(x, ["a"] * 3, x, ["a"] * 4, k=3)
