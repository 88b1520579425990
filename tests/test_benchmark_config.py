"""The shipped benchmark budgets validate, and every stage section is accepted by its own settings."""

from __future__ import annotations

import pytest

from cellduality.config import load_config, validate_config
from cellduality.errors import CellDualityError
from cellduality.pipeline.benchmark import BUDGETS, OFFLINE_TASKS, BenchmarkSettings, budget_path


@pytest.mark.parametrize("budget", BUDGETS)
def test_budget_files_validate_through_every_stage(budget):
    from cellduality.teacher import TeachConfig
    from cellduality.training.grpo import GRPOSettings
    from cellduality.training.sft import SFTSettings

    bench = load_config(BenchmarkSettings, budget_path(budget))
    assert set(bench.datasets) <= set(OFFLINE_TASKS)
    pipeline = bench.pipeline
    validate_config(TeachConfig, pipeline.get("teach", {}))
    validate_config(SFTSettings, pipeline.get("sft", {}))
    validate_config(GRPOSettings, pipeline.get("grpo", {}))


def test_unknown_budget_is_one_line_error():
    with pytest.raises(CellDualityError, match="choose one of: tiny, small, full"):
        budget_path("huge")
