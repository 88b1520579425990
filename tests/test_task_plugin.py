"""A fifth task that lives only in ``tests/task_plugin_sample.py`` runs the whole pipeline (issue #11):
sentences -> tasks build (its own typed options) -> teach (offline teacher) -> SFT -> GRPO with both
duality rewards -> evaluate (metrics and baselines) -> predict on an AnnData (Python and the
``cellduality predict`` command), with no change in ``src/``."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata
import pytest

from cellduality.cli.main import main
from cellduality.tasks.base import TASKS, register_task

PLUGIN_ENV = {**os.environ, "CELLDUALITY_TASKS": "task_plugin_sample", "PYTHONPATH": str(Path(__file__).parent)}
"""How a user's shell finds a plug-in task: its module on the path, named in CELLDUALITY_TASKS."""
TINY_GRPO = ["--max-steps", "1", "--set", "num_generations=2", "--set", "prompts_per_step=1",
             "--set", "max_completion_length=8", "--set", "dual_max_new_tokens=8", "--set", "save_steps=50"]


@pytest.fixture
def plugin():
    """Register the plug-in for one test only (other tests list exactly the built-in tasks)."""
    module = importlib.import_module("task_plugin_sample")
    register_task(module.ConditionTask)
    yield module
    TASKS.pop("condition", None)


def cli(args: list, capsys) -> str:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert not code, captured.out + captured.err
    return captured.out


def test_a_plugin_task_runs_end_to_end(plugin, pbmc_small, tmp_path, capsys):
    cells = pbmc_small[:240].copy()
    cells.obs["condition"] = cells.obs["phase"].astype(str)  # the cell-cycle phase as the "condition"
    h5ad = tmp_path / "cells.h5ad"
    cells.write_h5ad(h5ad)
    cli(["sentences", h5ad, tmp_path / "s", "--top-k", 24, "--label-key", "condition"], capsys)

    # the plug-in's typed options: a typo is refused with a suggestion, text is converted
    with pytest.raises(SystemExit) as refused:
        main(["tasks", "build", str(tmp_path / "s"), str(tmp_path / "bad"), "--task", "condition",
              "--option", "condition.n_hiden=3"])
    assert refused.value.code == 2 and "did you mean 'n_hidden'" in " ".join(capsys.readouterr().err.split())
    out = cli(["tasks", "build", tmp_path / "s", tmp_path / "t", "--task", "condition", "--max-genes", 10,
               "--max-examples", 24, "--option", "condition.hide=tail"], capsys)
    assert "condition" in out
    options = json.loads((tmp_path / "t" / "tasks.json").read_text())["tasks"]["condition"]["options"]
    assert options["n_hidden"] == 4 and options["hide"] == "tail" and options["max_genes"] == 10

    cli(["teach", tmp_path / "t", tmp_path / "sft_data", "--n", 2, "--max-examples", 16], capsys)
    report = json.loads((tmp_path / "sft_data" / "teach_report.json").read_text())
    assert {r["task"] for r in report["acceptance"]} == {"condition"}
    # no answer-only wording of its own: its answer-only rows are the primal prompt + the instruction
    from datasets import load_from_disk

    from cellduality.tasks.base import ANSWER_PROMPT, PRIMAL_DIRECT, direct_prompt

    rows = list(load_from_disk(str(tmp_path / "sft_data"))["train"])
    primal = {r["id"]: r["prompt"] for r in rows if r["direction"] == "primal"}
    legacy = [r for r in rows if r["direction"] == PRIMAL_DIRECT]
    assert legacy and not any(r["direction"] == ANSWER_PROMPT for r in rows)
    assert all(r["prompt"] == direct_prompt(primal[r["id"]]) for r in legacy)

    cli(["sft", tmp_path / "sft_data", tmp_path / "sft", "--model", "tiny", "--max-steps", 2,
         "--set", "batch_size=8"], capsys)
    for dual_reward in ("likelihood", "paper"):
        cli(["grpo", tmp_path / "t", tmp_path / f"grpo_{dual_reward}", "--sft-model", tmp_path / "sft",
             *TINY_GRPO, "--set", f"dual_reward={dual_reward}"], capsys)
        metrics = json.loads((tmp_path / f"grpo_{dual_reward}" / "metrics.json").read_text())
        assert metrics, dual_reward

    cli(["evaluate", tmp_path / "grpo_likelihood", tmp_path / "t", tmp_path / "eval", "--max-examples", 8,
         "--max-new-tokens", 16, "--no-reward-validity"], capsys)
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())["condition"]
    assert 0.0 <= scores["accuracy"] <= 1.0 and "malformed_rate" in scores
    baselines = json.loads((tmp_path / "eval" / "baselines.json").read_text())["condition"]
    assert set(baselines) == {"logreg", "knn10"} and baselines["logreg"]["accuracy"] > 0.3

    # predict: inference's generic path for classification tasks, keyed by the task name
    from cellduality.inference import predict_labels

    result = predict_labels(pbmc_small[:12].copy(), tmp_path / "grpo_likelihood", "condition", batch_size=12,
                            max_new_tokens=8, min_overlap=0.0, device="cpu")
    labels = set(json.loads((tmp_path / "t" / "tasks.json").read_text())["tasks"]["condition"]["context"]["labels"])
    assert set(result.obs["cellduality_condition"].astype(str)) <= labels
    assert result.uns["cellduality"]["condition"]["labels"] == sorted(labels)

    # the `cellduality predict` command, in a fresh process that finds the plug-in by CELLDUALITY_TASKS alone
    pbmc_small[:12].copy().write_h5ad(tmp_path / "new.h5ad")
    command = [sys.executable, "-m", "cellduality.cli.main", "predict", tmp_path / "new.h5ad", "--model",
               tmp_path / "grpo_likelihood", "--task", "condition", "--out", tmp_path / "predicted.h5ad",
               "--max-new-tokens", 8, "--batch-size", 12, "--min-overlap", 0, "--key-added", "cond"]
    ran = subprocess.run([str(a) for a in command], env=PLUGIN_ENV, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    predicted = anndata.read_h5ad(tmp_path / "predicted.h5ad")
    assert set(predicted.obs["cond_condition"].astype(str)) <= labels
    assert predicted.obs["cond_confidence"].between(0, 1).all()
    assert list(predicted.uns["cond"]["condition"]["labels"]) == sorted(labels)
    assert "Wrote" in ran.stdout and "cond_condition" in ran.stdout



def test_plugins_are_found_without_editing_the_package(monkeypatch):
    """``CELLDUALITY_TASKS=module`` makes the ``cellduality`` command import and register the task."""
    from cellduality.errors import CellDualityError
    from cellduality.tasks import load_plugins

    listed = subprocess.run([sys.executable, "-m", "cellduality.cli.main", "tasks", "list"], env=PLUGIN_ENV,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [
        "annotation", "condition", "generation", "perturbation", "sensitivity"]
    monkeypatch.setenv("CELLDUALITY_TASKS", "no_such_task_module")
    with pytest.raises(CellDualityError, match="'no_such_task_module' cannot be imported"):
        load_plugins()
