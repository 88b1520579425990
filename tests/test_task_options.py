"""Typed task options (issue #11): one pydantic model per task is the single declaration of option
names, types and defaults; the task, the CLI and ``tasks.json`` all go through it."""

from __future__ import annotations

import json

import pytest

from cellduality.errors import CellDualityError
from cellduality.tasks import build_task_datasets, get_task, load_tasks
from cellduality.tasks.builders import load_task_datasets
from helpers import to_cells


def test_a_typo_is_an_error_with_a_suggestion():
    with pytest.raises(CellDualityError, match="did you mean 'n_hidden'"):
        get_task("annotation", n_hiden=4)
    with pytest.raises(CellDualityError, match="unknown option of task 'generation'"):
        get_task("generation", n_hidden=4)  # an option of another task


def test_text_is_converted_to_the_declared_type():
    task = get_task("perturbation", include_control="false", mask_targets="yes", max_genes="12")
    assert task.options["include_control"] is False and task.options["mask_targets"] is True
    assert task.max_genes == 12
    with pytest.raises(CellDualityError, match="true or false"):
        get_task("perturbation", include_control="nope")
    with pytest.raises(CellDualityError, match="at least 2"):
        get_task("annotation", max_genes=1)


def test_one_default_per_option():
    assert get_task("annotation").n_hidden == get_task("sensitivity").n_hidden == 8
    assert {get_task(n).max_genes for n in ("annotation", "generation", "perturbation", "sensitivity")} == {32}


def test_tasks_json_records_the_options_used(pbmc_small, tmp_path):
    cells = to_cells(pbmc_small, "bulk_labels", top_k=24, raw=True)
    build_task_datasets(cells, ["annotation"], tmp_path / "t", max_genes=12, max_examples=8,
                        task_options={"annotation": {"n_hidden": "3", "hide": "tail"}})
    recorded = json.loads((tmp_path / "t" / "tasks.json").read_text())["tasks"]["annotation"]["options"]
    assert recorded["n_hidden"] == 3 and recorded["hide"] == "tail" and recorded["max_genes"] == 12
    assert recorded["label_key"] == "bulk_labels"
    task = load_tasks(tmp_path / "t")["annotation"]
    assert (task.n_hidden, task.options["hide"], task.max_genes) == (3, "tail", 12)
    with pytest.raises(CellDualityError, match="did you mean 'hide'"):
        build_task_datasets(cells, ["annotation"], tmp_path / "u", task_options={"annotation": {"hid": "tail"}})
    assert not (tmp_path / "u").exists()


def test_tasks_list_shows_the_declared_options(capsys):
    from cellduality.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["tasks", "list", "--options"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "annotation.n_hidden=8  (int)" in out and "perturbation.include_control=True  (bool)" in out
    assert "annotation.hide='interleaved'  (one of interleaved, random, tail, rare)" in out


def test_rare_hiding_counts_genes_of_the_training_cells_only(pbmc_small, tmp_path):
    cells = to_cells(pbmc_small, "bulk_labels", top_k=24, raw=True)
    build_task_datasets(cells, ["annotation"], tmp_path / "t", max_genes=12, max_examples=16,
                        task_options={"annotation": {"n_hidden": "4", "hide": "rare"}})
    task = load_tasks(tmp_path / "t")["annotation"]
    train = cells.splits["train"]
    expected: dict[str, int] = {}
    for i in train:
        for gene in set(cells.sentences[i].split()[:12]):
            expected[gene] = expected.get(gene, 0) + 1
    assert task.context.gene_frequency == expected
    row = load_task_datasets(tmp_path / "t", "dual")["train"][0]
    hidden, shown = json.loads(row["unknown"])["hidden"], [g for g in json.loads(row["known"])["masked"] if g]
    assert len(hidden) == 4
    assert max(expected.get(g, 0) for g in hidden) <= min(expected.get(g, 0) for g in shown)
