"""The model card (README.md) of a model folder: written with the model, names its data, loads as it
says, and `evaluate` fills in only its evaluation section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import load_from_disk

from cellduality.models.card import CARD_FILE, EVAL_END, EVAL_START, NOT_EVALUATED, update_model_card
from cellduality.tasks import build_task_datasets
from helpers import to_cells


@pytest.fixture(scope="module")
def tasks_dir(pbmc_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "tasks"
    cells = to_cells(pbmc_small, "bulk_labels", top_k=24, raw=True, source="pbmc68k_reduced")
    build_task_datasets(cells, ["annotation"], out, max_genes=8, seed=0, max_examples=12)
    return out


@pytest.fixture
def model_dir(tasks_dir, tmp_path) -> Path:
    """A `tiny` preset saved as an SFT model from ``tasks_dir`` (the card is written with it)."""
    from cellduality.models import load_model, save_cellduality_model

    primal = load_from_disk(str(tasks_dir / "primal"))["train"]
    vocabulary = json.loads((tasks_dir / "vocabulary.json").read_text())
    model, tokenizer = load_model("tiny", tokenizer_texts=list(primal["prompt"]) + list(primal["answer"]),
                                  genes=vocabulary)
    out = tmp_path / "my-model"
    save_cellduality_model(model, tokenizer, out, {"stage": "sft", "base_model": "tiny", "sft_data": str(tasks_dir),
                                                   "settings": {"learning_rate": 5e-4, "epochs": 3.0}},
                           lineage_dir=tasks_dir)
    return out


def test_card_names_model_data_settings_and_runs_as_written(model_dir, tasks_dir):
    card = (model_dir / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "- sft" in card.split("---")[1]
    assert "# CellDuality model `my-model` (sft)" in card and "the `tiny` preset" in card
    assert f"**Training data folder:** `{tasks_dir}`" in card and "pbmc68k_reduced" in card
    assert re.search(r"\| annotation \| pbmc68k_reduced \| \d+ \| \d+ \| train \d+, test \d+", card)
    assert "learning_rate: 0.0005" in card and NOT_EVALUATED in card
    assert 'load_model("my-model")' in card and "cellduality annotate cells.h5ad --model my-model" in card
    # both loading snippets run as written (the folder's name pointed at the folder, fewer tokens)
    prompt = load_from_disk(str(tasks_dir / "primal"))["test"][0]["prompt"]
    printed = []
    for part in ("With plain `transformers`", "With CellDuality"):
        code = card.split(part)[1].split("```python\n")[1].split("```")[0]
        code = code.replace("max_new_tokens=256", "max_new_tokens=4").replace('"my-model"', repr(str(model_dir)))
        exec(compile(code, part, "exec"), {"task_prompt": prompt, "print": printed.append})  # noqa: S102
    assert len(printed) == 2 and all(isinstance(text, str) for text in printed)


def test_evaluation_section_is_replaced_and_the_rest_kept(model_dir):
    path = model_dir / CARD_FILE
    path.write_text(path.read_text() + "\n## Notes of my own\nkeep me\n")
    update_model_card(model_dir, "first figures")
    update_model_card(model_dir, "| task | Acc. |\n|---|---|\n| annotation | 50.00 |")
    card = path.read_text()
    assert card.count(EVAL_START) == card.count(EVAL_END) == 1 and "first figures" not in card
    assert f"{EVAL_START}\n| task | Acc. |" in card and card.endswith("keep me\n") and NOT_EVALUATED not in card
    path.write_text("# my own card\n")  # a card without our markers is the user's: left alone
    assert update_model_card(model_dir, "figures") is None and path.read_text() == "# my own card\n"
    path.unlink()  # a model saved before cards existed gets one
    assert update_model_card(model_dir, "figures") == path and "figures\n" + EVAL_END in path.read_text()


def test_evaluate_writes_its_figures_into_the_card(model_dir, tasks_dir, tmp_path):
    from cellduality.evaluation.evaluate import evaluate_model

    results = evaluate_model(model_dir, tasks_dir, tmp_path / "eval", max_examples=4, baselines=False,
                             reward_validity=False, max_new_tokens=8, tasks=["annotation"])
    card = (model_dir / CARD_FILE).read_text()
    section = card.split(EVAL_START)[1].split(EVAL_END)[0]
    assert f"the `test` split of `{tasks_dir}`" in section and str(tmp_path / "eval") in section
    accuracy = f"{100 * results['annotation']['accuracy']:.2f}"
    assert "### annotation" in section and re.search(rf"\| this model \| {re.escape(accuracy)} \|", section)
    assert not (model_dir / (CARD_FILE + ".tmp")).exists()
