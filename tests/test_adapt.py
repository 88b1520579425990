"""`cellduality adapt` (issue #12) on real cells (pbmc68k_reduced) with a `tiny` model: rows never read
labels, end to end through the CLI (diagnostics, 1 GRPO step, model card, annotations), resume only
with the same inputs, and the bad inputs a user may try (one red line, exit code 2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from cellduality.adaptation.rows import MIN_CELLS, build_rows
from cellduality.cli.main import main
from cellduality.errors import CellDualityError
from cellduality.tasks import build_task_datasets, load_tasks
from cellduality.tasks.inpainting import full_cell
from cellduality.training.grpo import GRPOSettings
from helpers import save_tiny_model, to_cells

# a small recipe for a CPU test; everything else is the default recipe
FAST = ["--set", "num_generations=4", "--set", "max_completion_length=12", "--set", "dual_max_new_tokens=12",
        "--set", "save_steps=50"]


@pytest.fixture(scope="module")
def sft_dir(pbmc_small, tmp_path_factory) -> Path:
    """A `tiny` preset saved as a CellDuality model trained on pbmc68k_reduced's tasks (as tests/test_grpo.py)."""
    root = tmp_path_factory.mktemp("adapt")
    cells = to_cells(pbmc_small, "bulk_labels", top_k=24, raw=True)
    build_task_datasets(cells, ["annotation", "generation"], root / "tasks", max_genes=8, seed=0, max_examples=12)
    return save_tiny_model(root / "tasks", root / "sft")


@pytest.fixture(scope="module")
def cells_file(pbmc_small, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adapt_cells") / "cells.h5ad"
    pbmc_small[:24].copy().write_h5ad(path)
    return path


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code


def _one_line_error(capsys, expected: str) -> None:
    err = capsys.readouterr().err
    assert "Error:" in err and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_rows_never_read_labels(pbmc_small, sft_dir):
    """Scrambled (or removed) labels give identical prompts; no ground-truth column exists."""
    tasks = load_tasks(sft_dir / "cellduality.json")
    adata = pbmc_small[:60].copy()
    scrambled = adata.copy()
    rng = np.random.default_rng(1)
    for column in ("bulk_labels", "louvain"):
        scrambled.obs[column] = rng.permutation(scrambled.obs[column].to_numpy())
    unlabelled = adata.copy()
    unlabelled.obs = unlabelled.obs[[]]
    first, second, third = (build_rows(a, tasks, seed=3) for a in (adata, scrambled, unlabelled))
    assert first.rows == second.rows == third.rows and first.digest() == third.digest()
    assert first.counts == {"annotation": 60}  # generation needs no cells: not adapted
    assert set(first.rows[0]) == {"id", "task", "prompt", "known", "unknown", "seed"}
    # the prompt's cell is ranked within the model's panel, as inference ranks it
    panel = tasks["annotation"].context.genes
    genes = json.loads(first.rows[0]["known"])["masked"]
    assert all(g is None or g in panel for g in genes)
    assert build_rows(adata, tasks, seed=4).rows != first.rows  # the seed is not ignored
    with pytest.raises(CellDualityError, match="not trained on sensitivity"):
        build_rows(adata, tasks, drug="PLX4720")


def test_rare_hiding_is_recounted_on_the_users_cells(pbmc_small, sft_dir):
    """``hide: rare`` hides what is rare among the cells being adapted to, unless told to keep the model's counts."""
    from cellduality.tasks import get_task
    from cellduality.tasks.inpainting import prompt_frequency

    model_task = load_tasks(sft_dir / "cellduality.json")["annotation"]
    frequency = {g: 1000 - i for i, g in enumerate(sorted(model_task.context.genes))}  # a made-up training count
    rare = get_task("annotation", replace(model_task.context, gene_frequency=frequency), hide="rare", n_hidden=3)
    adata = pbmc_small[:60].copy()
    posed = build_rows(adata, {"annotation": rare}, seed=0)
    counts = prompt_frequency([full_cell(json.loads(r["known"]), json.loads(r["unknown"])) for r in posed.rows],
                              rare.max_genes)
    assert posed.tasks["annotation"].context.gene_frequency == counts
    kept = build_rows(adata, {"annotation": rare}, seed=0, recount=False)
    assert kept.tasks["annotation"] is rare and kept.rows != posed.rows
    for built, freq in ((posed, counts), (kept, frequency)):
        for row in built.rows:
            hidden = json.loads(row["unknown"])["hidden"]
            shown = [g for g in json.loads(row["known"])["masked"] if g is not None]
            assert len(hidden) == 3 and max(freq.get(g, 0) for g in hidden) <= min(freq.get(g, 0) for g in shown)
    interleaved = build_rows(adata, {"annotation": model_task}, seed=0)
    assert interleaved.tasks["annotation"] is model_task  # other strategies: nothing recounted


def test_inference_poses_the_task_on_the_cells_it_annotates(pbmc_small, sft_dir, monkeypatch):
    """Annotation poses the task on the annotated cells as adapt does (so `hide: rare` counts among them)."""
    from cellduality.inference.predict import annotate, model_sentences
    from cellduality.tasks.inpainting import InpaintingTask

    seen: list = []
    original = InpaintingTask.posed_on

    def spy(self, cells):  # noqa: ANN001, ANN202
        seen.append([list(c) for c in cells])
        return original(self, cells)

    monkeypatch.setattr(InpaintingTask, "posed_on", spy)
    adata = pbmc_small[:24].copy()
    annotate(adata, sft_dir, batch_size=8)
    expected, _ = model_sentences(adata, load_tasks(sft_dir / "cellduality.json")["annotation"], 0)
    assert seen == [expected]


def test_adapt_end_to_end(pbmc_small, cells_file, sft_dir, tmp_path, capsys):
    before = hashlib.sha256(cells_file.read_bytes()).hexdigest()
    out = tmp_path / "adapted"
    code = _run(["adapt", sft_dir, cells_file, out, "--steps", "1", "--diagnose-cells", "6", "--annotate", *FAST])
    printed = capsys.readouterr().out
    assert code in (0, None), printed
    assert "Label-free diagnostics" in printed and "annotation:" in printed
    diagnostics = json.loads((out / "diagnostics.json").read_text())["tasks"]["annotation"]
    assert diagnostics["cells"] == 6 and diagnostics["verdict"].startswith("annotation:")
    info = json.loads((out / "model" / "cellduality.json").read_text())
    assert info["stage"] == "grpo-duality" and info["global_step"] == 1
    adaptation = info["adaptation"]
    assert adaptation["data"] == str(cells_file) and adaptation["n_cells"] == 24
    assert adaptation["budget"]["steps_run"] == 1 and adaptation["budget"]["max_steps"] == 1
    assert adaptation["labels_read"] is False and info["grpo"]["num_generations"] == 4
    assert info["grpo"]["learning_rate"] == GRPOSettings().learning_rate  # the recipe's default, untouched
    card = (out / "model" / "README.md").read_text()
    assert "Adaptation (label-free)" in card and str(cells_file) in card and "ran 1 steps" in card
    rl = load_from_disk(str(out / "tasks" / "rl"))["train"]
    assert len(rl) == 24 and "target" not in rl.column_names
    import anndata as ad

    annotated = ad.read_h5ad(out / "annotated.h5ad")
    labels = set(load_tasks(sft_dir / "cellduality.json")["annotation"].context.labels) | {"unparsed"}
    assert annotated.n_obs == 24 and set(annotated.obs["cellduality_cell_type"].astype(str)) <= labels
    assert hashlib.sha256(cells_file.read_bytes()).hexdigest() == before  # the input is never modified
    summary = json.loads((out / "adapt.json").read_text())
    assert summary["model"] == str(out / "model")

    # --resume with the same inputs: finished, nothing to do; with other cells: refused, naming why
    assert _run(["adapt", sft_dir, cells_file, out, "--steps", "1", "--resume", *FAST]) in (0, None)
    assert "finished adaptation" in capsys.readouterr().out
    other = tmp_path / "other.h5ad"
    pbmc_small[24:48].copy().write_h5ad(other)
    assert _run(["adapt", sft_dir, other, out, "--steps", "1", "--resume", *FAST]) == 2
    _one_line_error(capsys, "--resume: ")
    assert _run(["adapt", sft_dir, cells_file, out, "--steps", "2", "--resume", *FAST]) == 2
    _one_line_error(capsys, "max_steps 1 -> 2")
    assert _run(["adapt", sft_dir, cells_file, out, "--steps", "1", *FAST]) == 2  # no --resume: refused
    _one_line_error(capsys, "pass --resume")


def test_wall_time_stops_training(cells_file, sft_dir, tmp_path, capsys):
    from cellduality.adaptation import adapt, parse_duration

    assert parse_duration("30m") == 1800 and parse_duration("1.5h") == 5400 and parse_duration(90) == 90
    with pytest.raises(CellDualityError, match="not a duration"):
        parse_duration("soon")
    settings = GRPOSettings(num_generations=4, max_completion_length=12, dual_max_new_tokens=12, save_steps=50)
    summary = adapt(str(cells_file), sft_dir, tmp_path / "o", steps=50, wall_time=0.01, settings=settings,
                    diagnose_cells=0, echo=None)
    budget = summary["budget"]
    assert budget["stopped_by_wall_time"] and budget["steps_run"] == 1 and budget["max_steps"] == 50


def test_bad_inputs_are_one_line_errors(pbmc_small, cells_file, sft_dir, tmp_path, capsys):
    import anndata as ad

    no_overlap = pbmc_small[:30].copy()
    no_overlap.raw = None
    no_overlap.var_names = [f"NOTAGENE{i}" for i in range(no_overlap.n_vars)]
    no_overlap.X = np.abs(no_overlap.X)
    no_overlap.write_h5ad(tmp_path / "no_overlap.h5ad")
    pbmc_small[:1].copy().write_h5ad(tmp_path / "one.h5ad")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["adapt", sft_dir, tmp_path / "no_overlap.h5ad", tmp_path / "o1"], "None of your cells expresses"),
        (["adapt", sft_dir, tmp_path / "one.h5ad", tmp_path / "o2"], f"at least {MIN_CELLS} cells; got 1"),
        (["adapt", tmp_path, cells_file, tmp_path / "o3"], "is not a CellDuality model"),
        (["adapt", sft_dir, cells_file, busy], "files CellDuality did not write"),
        (["adapt", sft_dir, tmp_path / "missing.h5ad", tmp_path / "o4"], "does not exist"),
        (["adapt", sft_dir, cells_file, tmp_path / "o5", "--wall-time", "soon"], "not a duration"),
        (["adapt", sft_dir, cells_file, tmp_path / "o6", "--drug-key", "drug"], "not trained on sensitivity"),
    ]
    for args, expected in cases:
        assert _run(args) == 2, args
        _one_line_error(capsys, expected)
    assert (busy / "notes.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))  # refusals write nothing
    assert ad.read_h5ad(cells_file).n_obs == 24


def test_interrupted_adaptation_resumes(cells_file, sft_dir, tmp_path, monkeypatch):
    """Ctrl-C during GRPO: the tasks folder and diagnostics are kept, --resume trains on and finishes."""
    import cellduality.training.grpo as grpo
    from cellduality.adaptation import adapt

    settings = GRPOSettings(num_generations=4, max_completion_length=12, dual_max_new_tokens=12, save_steps=50)
    real = grpo.run_grpo

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grpo, "run_grpo", interrupted)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        adapt(str(cells_file), sft_dir, out, steps=1, settings=settings, diagnose_cells=4, echo=None)
    kept = (out / "diagnostics.json").read_text()
    assert (out / "tasks" / "rl").is_dir() and not (out / "adapt.json").exists()
    with pytest.raises(CellDualityError, match="pass --resume"):
        adapt(str(cells_file), sft_dir, out, steps=1, settings=settings, diagnose_cells=4, echo=None)
    monkeypatch.setattr(grpo, "run_grpo", real)
    summary = adapt(str(cells_file), sft_dir, out, steps=1, settings=settings, diagnose_cells=4, echo=None,
                    resume=True)
    assert summary["budget"]["steps_run"] == 1 and (out / "diagnostics.json").read_text() == kept
