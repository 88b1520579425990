"""Seeded train/test splits stored as row indices, and control pairing for perturbation data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellduality.errors import InputDataError


def stratified_split(labels: Sequence | np.ndarray | None, test_size: float = 0.2, seed: int = 0,
                     n: int | None = None) -> dict[str, np.ndarray]:
    """``{"train": idx, "test": idx}`` (sorted int arrays) with every label in both where possible.

    Each label keeps ``round(test_size * count)`` cells in test (at least 1 when it has >= 2
    cells, none when it has one), so rare cell types are not lost from training. ``labels=None``
    gives a plain seeded random split of ``n`` rows.
    """
    if not 0.0 <= test_size < 1.0:
        raise InputDataError(f"test_size must be in [0, 1), got {test_size}.")
    rng = np.random.default_rng(seed)
    if labels is None:
        if n is None:
            raise ValueError("pass labels or n")
        perm = rng.permutation(n)
        n_test = int(round(test_size * n))
        return {"train": np.sort(perm[n_test:]), "test": np.sort(perm[:n_test])}
    codes = pd.factorize(pd.Series(np.asarray(labels, dtype=object)).astype(str))[0]
    test: list[np.ndarray] = []
    for code in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == code))
        k = int(round(test_size * members.size))
        if test_size > 0 and members.size >= 2:
            k = min(max(k, 1), members.size - 1)
        test.append(members[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(codes.size, dtype=bool)
    train_mask[test_idx] = False
    return {"train": np.flatnonzero(train_mask), "test": test_idx.astype(np.int64)}


def pair_controls(obs: pd.DataFrame, perturbation_key: str, control_value: str,
                  group_key: str | None = None, seed: int = 0) -> np.ndarray:
    """For each perturbed cell, the row of a seeded random control cell of the same group; -1 for controls.

    Perturbed cells whose group has no control also get -1 (nothing to compare them with).
    """
    for key in (perturbation_key, group_key):
        if key is not None and key not in obs.columns:
            raise InputDataError(f"'{key}' is not an .obs column (available: {', '.join(map(str, obs.columns))}).")
    perturbation = obs[perturbation_key].astype(str).to_numpy()
    is_control = perturbation == str(control_value)
    if not is_control.any():
        values = ", ".join(sorted(set(perturbation))[:10])
        raise InputDataError(f"no cell has {perturbation_key} == '{control_value}' (values: {values}); "
                             "pass the control value with --control-value.")
    groups = obs[group_key].astype(str).to_numpy() if group_key else np.zeros(len(obs), dtype=object)
    rng = np.random.default_rng(seed)
    paired = np.full(len(obs), -1, dtype=np.int64)
    for group in pd.unique(groups):
        in_group = groups == group
        controls = np.flatnonzero(in_group & is_control)
        perturbed = np.flatnonzero(in_group & ~is_control)
        if controls.size and perturbed.size:
            paired[perturbed] = controls[rng.integers(0, controls.size, perturbed.size)]
    return paired
