"""Pipeline bookkeeping: finished stages are skipped on re-run; task folders of datasets merge."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from cellduality.errors import CellDualityError
from cellduality.pipeline.quickstart import QuickstartSettings, load_quickstart_settings
from cellduality.pipeline.stages import run_stage, stage_done
from cellduality.pipeline.training import merge_task_dirs


def test_finished_stage_is_skipped_and_interrupted_one_reruns(tmp_path):
    console = Console(quiet=True)
    calls = []

    def work():
        calls.append(1)
        (tmp_path / "s").mkdir(exist_ok=True)
        return {"n": len(calls)}

    first = run_stage("s", tmp_path / "s", work, console)
    again = run_stage("s", tmp_path / "s", work, console)
    assert len(calls) == 1 and not first.skipped and again.skipped and again.info == {"n": 1}

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("t", tmp_path / "t", interrupted, console)
    assert not stage_done(tmp_path / "t")  # no marker: the next run does the stage again


def test_shipped_quickstart_config_is_valid():
    settings = load_quickstart_settings()
    assert isinstance(settings, QuickstartSettings)
    assert "pbmc68k_reduced" in settings.datasets


def test_quickstart_config_typo_is_one_line_error(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("max_gene: 3\n")
    with pytest.raises(CellDualityError, match="unknown key 'max_gene'.*max_genes"):
        load_quickstart_settings(path)


def test_quickstart_config_overrides_the_shipped_one_key_by_key(tmp_path):
    shipped = load_quickstart_settings()
    path = tmp_path / "q.yaml"
    path.write_text("seed: 3\ngrpo: {max_steps: 50}\n")
    settings = load_quickstart_settings(path)
    assert settings.seed == 3 and settings.grpo["max_steps"] == 50
    # everything else stays as shipped (a section is merged, not replaced)
    assert settings.sft == shipped.sft and settings.datasets == shipped.datasets
    assert {k: v for k, v in settings.grpo.items() if k != "max_steps"} == \
        {k: v for k, v in shipped.grpo.items() if k != "max_steps"}
    path.write_text("datasets: {kang2018: {source: kang2018, tasks: [annotation], label_key: cell_type}}\n")
    assert list(load_quickstart_settings(path).datasets) == ["kang2018"]  # the user's datasets, not added ones


def _tasks(cells, names, out):
    from cellduality.tasks import build_task_datasets

    build_task_datasets(cells, names, out, max_genes=16, max_examples=20)
    return out


def test_merge_task_dirs(tmp_path, pbmc_small):
    from datasets import load_from_disk

    from cellduality.sentences import build_cell_sentences

    cells = build_cell_sentences(pbmc_small, top_k=32, label_keys=["bulk_labels"], seed=0)
    a = _tasks(cells, ["annotation"], tmp_path / "a")
    b = _tasks(cells, ["generation"], tmp_path / "b")
    merge_task_dirs([a, b], tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "tasks.json").read_text())
    assert sorted(manifest["tasks"]) == ["annotation", "generation"]
    rl = load_from_disk(str(tmp_path / "m" / "rl"))
    assert set(rl["train"]["task"]) == {"annotation", "generation"}
    assert "target" not in rl["train"].column_names
    n = sum(len(load_from_disk(str(d / "rl"))["train"]) for d in (a, b))
    assert len(rl["train"]) == n
    with pytest.raises(CellDualityError, match="two datasets"):
        merge_task_dirs([a, a], tmp_path / "m2")


def test_atomic_dir_replaces_on_success_and_keeps_old_output_on_failure(tmp_path):
    from cellduality.paths import atomic_dir

    out = tmp_path / "out"
    with atomic_dir(out, "evaluate") as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, "evaluate") as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"  # the interrupted write left nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_dir(out, "evaluate") as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [".cellduality-output.json", "b.txt"]
    (out / "user.txt").write_text("mine")  # content the command did not write: never replaced
    with pytest.raises(CellDualityError, match="did not write"), atomic_dir(out, "evaluate") as tmp:
        (tmp / "c.txt").write_text("third")
    assert (out / "user.txt").read_text() == "mine" and (out / "b.txt").is_file()


def test_quickstart_evaluates_with_the_duality_reward_mode_it_trained_with(tmp_path, monkeypatch):
    """reward validity is about the reward that trained the model: `grpo.dual_reward: paper` reaches the
    evaluation (an explicit `evaluate.dual_reward` wins; unset, GRPO's default mode)."""
    import json

    import cellduality.pipeline.quickstart as quickstart
    import cellduality.pipeline.training as training
    from cellduality.pipeline.training import evaluate_options
    from cellduality.training.grpo import GRPOSettings

    seen: list[dict] = []

    def evaluate_stage(models, task_dirs, out, options, seed):
        seen.append(dict(options))
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text("{}")

    def nothing(*args, **kwargs):  # the stages before evaluation, out of this test's scope
        return {}

    for name in ("teach_stage", "sft_stage", "grpo_stage"):
        monkeypatch.setattr(training, name, nothing)
    monkeypatch.setattr(training, "evaluate_stage", evaluate_stage)
    monkeypatch.setattr(quickstart, "_sentences_stage", nothing)
    monkeypatch.setattr(quickstart, "_tasks_stage", nothing)
    settings = quickstart.load_quickstart_settings()
    settings = settings.model_copy(update={"grpo": {**settings.grpo, "dual_reward": "paper"}})
    summary = quickstart.run_quickstart(tmp_path / "qs", settings)
    assert seen[0]["dual_reward"] == "paper" and seen[0]["max_examples"] == settings.evaluate["max_examples"]
    assert summary["evaluation"] == {} and json.loads((tmp_path / "qs" / "summary.json").read_text())

    assert evaluate_options({}, {})["dual_reward"] == GRPOSettings.model_fields["dual_reward"].default
    assert evaluate_options({"dual_reward": "paper"}, {"dual_reward": "likelihood"})["dual_reward"] == "likelihood"
