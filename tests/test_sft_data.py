"""SFT-format test data from real cells (scanpy's bundled pbmc68k_reduced): the folder the model tests use.

The rows and folder come from ``helpers.sft_rows`` / ``helpers.make_sft_folder``. Rows follow the contract ``cellduality teach`` writes (architecture.md §4): a ``DatasetDict`` with
``prompt``, ``completion``, ``task``, ``direction``, ``id`` and ``tasks.json`` /
``inverse.json`` / ``vocabulary.json`` beside it. Prompts come from the real annotation task
templates, so the texts carry real gene symbols (``HLA-DRA``, ``RP11-782C8.1``), newlines and
the ``<think>``/``<answer>`` format.
"""

from __future__ import annotations

from helpers import make_sft_folder


def test_sft_folder_follows_the_teach_contract(pbmc_small, tmp_path):
    from datasets import load_from_disk

    folder = make_sft_folder(pbmc_small, tmp_path / "sft", n_cells=10)
    data = load_from_disk(str(folder))
    assert set(data) == {"train", "test"}
    assert {"prompt", "completion", "task", "direction", "id"} <= set(data["train"].column_names)
    assert {r["direction"] for r in data["train"]} == {"primal", "dual"}
    assert all(r["completion"].startswith("<think>") for r in data["train"])
