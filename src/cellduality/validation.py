"""Checks of user data that must fail early and in one line, or be counted, never silently "fixed".

* Label columns: markup that would break the ``<think>/<answer>`` format is rejected with the
  offending values; a continuous column (many distinct fractional numbers) is not a label;
  missing labels (NaN/None/"") are stored as "" and left out of labelled task splits, counted.
* Stages that need a test split refuse an empty one instead of writing an empty result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellduality.errors import CellDualityError, InputDataError

MISSING_LABELS = frozenset({"", "nan", "NaN", "None", "<NA>", "NA", "null"})
"""How a missing label reads once stored as text (older sentence folders wrote NaN as "nan")."""

MARKUP = re.compile(r"<\s*/?\s*(?:think|answer)\b[^>]*>|<\|[^|>]*\|>", re.IGNORECASE)
"""Tags of the response format and chat special tokens: a label carrying them corrupts prompts and answers."""

CONTINUOUS_MIN_VALUES = 20
"""A numeric column with more distinct fractional values than this is a measurement, not a class."""


def is_missing(values: pd.Series) -> np.ndarray:
    """Boolean mask of missing labels: NaN/None/NA and blank or "nan"-like strings."""
    as_text = values.astype(str).str.strip()
    return (values.isna() | as_text.isin(MISSING_LABELS)).to_numpy()


def label_text(values: pd.Series) -> list[str]:
    """Labels as text with missing ones as "" (never a class called ``nan``)."""
    text = values.astype(str).str.strip()
    return text.where(~is_missing(values), "").tolist()


def check_label_column(obs: pd.DataFrame, key: str, option: str = "--label-key") -> int:
    """Validate label column ``key``; return how many cells have no label."""
    values = obs[key]
    missing = is_missing(values)
    if missing.all():
        raise InputDataError(f"{option} '{key}' has no labels at all (every value is missing); choose another column.")
    present = values[~missing]
    if pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present):
        numbers = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
        fractional = bool((np.abs(numbers - np.round(numbers)) > 1e-9).any())
        distinct = np.unique(numbers).size
        if fractional and distinct > CONTINUOUS_MIN_VALUES:
            raise InputDataError(
                f"{option} '{key}' is continuous ({distinct} distinct numbers such as {numbers[0]:.4g}), not a "
                "class label; pass a categorical column, or bin this one into classes first."
            )
    check_markup(obs, [key], option)
    return int(missing.sum())


def check_markup(obs: pd.DataFrame, keys: Iterable[str | None], option: str = "--label-key") -> None:
    """Reject values of ``keys`` that contain response-format tags (``<think>``, ``</answer>``, ...)."""
    for key in keys:
        if not key or key not in obs.columns:
            continue
        values = pd.unique(obs[key].astype(str))
        bad = sorted(v for v in values if MARKUP.search(v))
        if bad:
            shown = ", ".join(repr(v) for v in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            raise InputDataError(
                f"{option} '{key}' has values with markup that would break prompts and answers: {shown}; "
                "rename them (remove <think>/<answer> tags) and re-run."
            )


def labelled_indices(cells: Any, label_key: str | None, indices: Sequence[int]) -> tuple[list[int], int]:
    """``indices`` without the cells whose ``label_key`` is missing, and how many were left out."""
    obs = cells.obs
    if not label_key or label_key not in obs.columns:
        return list(indices), 0
    missing = is_missing(obs[label_key])
    kept = [int(i) for i in indices if not missing[int(i)]]
    return kept, len(indices) - len(kept)


def require_test_rows(tasks_dir: str | Path, tasks: Sequence[str] | None, what: str) -> None:
    """Refuse a tasks folder whose test split is empty (for the chosen tasks) where ``what`` needs one."""
    import json

    manifest_path = Path(tasks_dir) / "tasks.json"
    if not manifest_path.is_file():
        return  # the stage itself reports a missing/invalid tasks folder
    counts = json.loads(manifest_path.read_text()).get("counts", {}).get("test")
    if counts is None:
        return
    chosen = list(tasks) if tasks else list(counts)
    if sum(int(counts.get(name, 0)) for name in chosen) == 0:
        raise CellDualityError(
            f"{tasks_dir} has no test examples{' for ' + ', '.join(chosen) if tasks else ''}, which {what} needs; "
            "rebuild the sentences with --test-size above 0 (e.g. 0.2), then `cellduality tasks build`."
        )
