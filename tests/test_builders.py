"""Task dataset builders on real data: schemas, lineage, mixing, the annotation-free RL set, and
all four tasks on real single-cell sets (pbmc68k_reduced, Kang 2018, A375/PLX4720, Papalexi 2021).

The cells are handed to the builders as a small container with the attributes of
``cellduality.sentences.CellSentenceDataset`` (architecture.md §1) that the tasks read:
``sentences``, ``obs``, ``meta``, ``vocabulary``, ``splits``.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk

from cellduality.errors import CellDualityError
from cellduality.rewards import DualityReward
from cellduality.tasks import build_task_datasets, load_tasks, loads
from cellduality.tasks.builders import RL_COLUMNS
from cellduality.tasks.text import parse_label
from conftest import shared_file
from helpers import Cells, to_cells


@pytest.fixture(scope="module")
def pbmc(pbmc_small) -> Cells:
    return to_cells(pbmc_small, "bulk_labels", top_k=64, raw=True)


def rows(path, folder, split="train"):
    return list(load_from_disk(str(path / folder))[split])


# ---- schemas, lineage, mixing ----------------------------------------------------------------


def test_build_writes_the_contract(pbmc, tmp_path):
    out = tmp_path / "tasks"
    manifest = build_task_datasets(pbmc, ["annotation", "generation"], out, max_genes=16, seed=1)
    primal_cols = ["id", "task", "prompt", "answer", "known", "unknown", "target", "seed", "meta"]
    for folder, cols in {"primal": primal_cols, "dual": primal_cols, "rl": list(RL_COLUMNS),
                         "rl_oracle": [*RL_COLUMNS, "target"]}.items():
        dd = load_from_disk(str(out / folder))
        assert set(dd) == {"train", "test"} and dd["train"].column_names == cols
        assert len(dd["test"]) == 2 * len(pbmc.splits["test"])
    assert json.loads((out / "vocabulary.json").read_text()) == pbmc.vocabulary
    saved = json.loads((out / "tasks.json").read_text())
    assert saved["tasks"]["annotation"]["context"]["labels"] == manifest["tasks"]["annotation"]["context"]["labels"]
    tasks = load_tasks(out)
    assert set(tasks) == {"annotation", "generation"} and tasks["annotation"].max_genes == 16
    # prompts are truncated to max_genes; primal/dual/rl rows agree with each other
    primal = {r["id"]: r for r in rows(out, "primal")}
    for row in rows(out, "dual"):
        p = primal[row["id"]]
        assert row["known"] == p["known"] and row["unknown"] == p["unknown"]
        if row["task"] == "annotation":
            assert len(loads(p["known"])["masked"]) == 16
            assert not set(loads(row["unknown"])["hidden"]) & set(row["prompt"].split())
            assert row["answer"] == " ".join(loads(row["unknown"])["hidden"])
        else:
            assert row["answer"] == loads(row["unknown"])["cell_type"]
            assert p["answer"] in row["prompt"]  # dual prompt built from y*
    with pytest.raises(CellDualityError, match="already exists"):
        build_task_datasets(pbmc, ["annotation"], out)


def test_weights_set_the_train_mixture(pbmc, tmp_path):
    manifest = build_task_datasets(pbmc, ["annotation", "generation"], tmp_path / "m",
                                   weights={"annotation": 3, "generation": 1}, max_examples=100)
    assert manifest["counts"]["train"] == {"annotation": 150, "generation": 50}
    assert manifest["counts"]["test"] == {"annotation": 100, "generation": 100}
    train = rows(tmp_path / "m", "rl")
    assert Counter(r["task"] for r in train) == {"annotation": 150, "generation": 50}
    assert len({r["task"] for r in train[:20]}) == 2  # shuffled, not blocked by task


def test_missing_columns_fail_with_one_line(pbmc, tmp_path):
    with pytest.raises(CellDualityError, match="perturbation column") as err:
        build_task_datasets(pbmc, ["perturbation"], tmp_path / "p")
    assert "\n" not in str(err.value)
    with pytest.raises(CellDualityError, match="column 'drug'"):
        build_task_datasets(pbmc, ["sensitivity"], tmp_path / "s", label_key="bulk_labels")
    with pytest.raises(CellDualityError, match="column 'cell_type'"):
        build_task_datasets(pbmc, ["annotation"], tmp_path / "a", label_key="cell_type")
    assert not (tmp_path / "a").exists()  # nothing half-written


# ---- the RL set carries no ground truth ------------------------------------------------------


def marker_dual(train: Cells, label_key: str, labels):
    """A dual with no language model (BASELINES.md): hidden genes = the genes most frequent in
    training cells of the named type that are not among the observed genes, in that order."""
    freq: dict[str, Counter] = defaultdict(Counter)
    for i in train.splits["train"]:
        freq[train.obs[label_key].iloc[i]].update(train.sentences[i].split()[:16])

    def generate(prompts):
        out = []
        for prompt in prompts:
            label = next((lab for lab in sorted(labels, key=len, reverse=True) if f"{lab} cell" in prompt
                          or f"Cell type: {lab}." in prompt), None)
            seen = set(prompt.split())
            guess = [g for g, _ in freq.get(label, Counter()).most_common(40) if g not in seen][:8]
            out.append(f"<answer>{' '.join(guess)}</answer>")
        return out

    return generate


def duality_rewards(out, completions_for, generate):
    rl = rows(out, "rl", "test")
    tasks = load_tasks(out)
    reward = DualityReward(tasks, generate)
    completions = [completions_for(r) for r in rl]
    cols = {k: [r[k] for r in rl] for k in ("task", "known", "unknown", "seed")}
    return reward([r["prompt"] for r in rl], completions, **cols), rl


def test_rl_rows_are_annotation_free(pbmc, tmp_path):
    labels = sorted(set(pbmc.obs["bulk_labels"]))
    build_task_datasets(pbmc, ["annotation"], tmp_path / "true")
    shuffled = pbmc.obs.copy()
    shuffled["bulk_labels"] = random.Random(0).sample(list(shuffled["bulk_labels"]), len(shuffled))
    build_task_datasets(replace(pbmc, obs=shuffled), ["annotation"], tmp_path / "shuffled")
    deleted = pbmc.obs.drop(columns=["bulk_labels"])
    build_task_datasets(replace(pbmc, obs=deleted, meta={}), ["annotation"], tmp_path / "deleted",
                        task_options={"annotation": {"labels": labels}})
    truth = rows(tmp_path / "true", "rl") + rows(tmp_path / "true", "rl", "test")
    for other in ("shuffled", "deleted"):
        assert rows(tmp_path / other, "rl") + rows(tmp_path / other, "rl", "test") == truth
    # ... hence the duality reward of any policy output is unchanged
    generate = marker_dual(pbmc, "bulk_labels", labels)
    answer = lambda row: f"<answer>{labels[row['seed'] % len(labels)]}</answer>"  # noqa: E731
    r_true, _ = duality_rewards(tmp_path / "true", answer, generate)
    r_deleted, _ = duality_rewards(tmp_path / "deleted", answer, generate)
    assert r_true == r_deleted
    # the oracle rows are where the labels live
    oracle = rows(tmp_path / "true", "rl_oracle")
    assert {loads(r["target"]) for r in oracle} <= set(labels)
    assert all("target" not in r and "meta" not in r for r in truth)


def test_annotation_reward_prefers_the_true_label_on_pbmc(pbmc, tmp_path):
    """With a simple marker-based dual the duality reward separates true from wrong labels."""
    out = tmp_path / "a"
    build_task_datasets(pbmc, ["annotation"], out)
    labels = sorted(set(pbmc.obs["bulk_labels"]))
    generate = marker_dual(pbmc, "bulk_labels", labels)
    truth = {r["id"]: loads(r["target"]) for r in rows(out, "rl_oracle", "test")}
    right, rl = duality_rewards(out, lambda r: f"<answer>{truth[r['id']]}</answer>", generate)
    rng = random.Random(1)
    wrong, _ = duality_rewards(
        out, lambda r: f"<answer>{rng.choice([x for x in labels if x != truth[r['id']]])}</answer>", generate)
    auc = np.mean([float(a > b) + 0.5 * float(a == b) for a, b in zip(right, wrong, strict=True)])
    assert np.mean(right) > np.mean(wrong) and auc > 0.7, (np.mean(right), np.mean(wrong), auc)


# ---- the other real data sets ----------------------------------------------------------------


@pytest.mark.shared_data
def test_kang2018_annotation_generation_and_ifnb_perturbation(data_dir, tmp_path):
    adata = ad.read_h5ad(shared_file(data_dir, "kang2018_pbmc_ifnb_scgen/kang2018_scgen_valid.h5ad"))
    cells = to_cells(adata, "cell_type", top_k=64, perturbation_key="condition", control_value="control",
                     group_key="cell_type")
    out = tmp_path / "kang"
    manifest = build_task_datasets(cells, ["annotation", "generation", "perturbation"], out, max_examples=300)
    ctx = manifest["tasks"]["perturbation"]["context"]
    assert ctx["perturbations"] == ["cytokine stimulation with IFN-beta", "control (no perturbation)"]
    tasks = load_tasks(out)
    primal = rows(out, "primal")
    pert = [r for r in primal if r["task"] == "perturbation"]
    assert {loads(r["unknown"])["perturbation"]["kind"] for r in pert} == {"cytokine-stimulation", "control"}
    assert all(loads(r["meta"])["group_matched"] for r in pert)  # controls of the same cell type
    for r in pert[:50]:
        meta = loads(r["meta"])
        assert adata.obs.loc[meta["control_id"], "condition"] == "control"
        assert adata.obs.loc[meta["control_id"], "cell_type"] == adata.obs.loc[meta["cell_id"], "cell_type"]
    dual = {r["id"]: r for r in rows(out, "dual")}
    for r in primal[:100]:  # the canonical answers parse back and reach the full reward
        task = tasks[r["task"]]
        assert task.parse_primal(f"<answer>{r['answer']}</answer>") == loads(r["target"])
        assert task.duality_score(loads(r["unknown"]), f"<answer>{dual[r['id']]['answer']}</answer>") == 1.0
    assert {loads(r["target"]) for r in primal if r["task"] == "annotation"} <= set(adata.obs["cell_type"])


@pytest.mark.shared_data
def test_a375_plx4720_sensitivity_via_entrez_map(data_dir, tmp_path):
    adata = ad.read_h5ad(shared_file(data_dir, "ho2018_a375_plx4720_scad/a375_plx4720_target.h5ad"))
    table = pd.read_csv(shared_file(data_dir, "gene_id_maps/human_ensembl_symbol_entrez_pathlinkR.tsv"), sep="\t")
    table = table.dropna(subset=["entrezGeneId", "hgncSymbol"])
    to_symbol = dict(zip(table["entrezGeneId"].astype(int).astype(str), table["hgncSymbol"], strict=True))
    symbols = [to_symbol[str(v).split(":")[-1]] for v in adata.var_names]
    cells = to_cells(adata, "sensitivity", top_k=64, symbols=symbols)
    out = tmp_path / "a375"
    manifest = build_task_datasets(cells, ["sensitivity"], out)
    ctx = manifest["tasks"]["sensitivity"]["context"]
    assert ctx["labels"] == ["resistant", "sensitive"] and ctx["drugs"] == ["PLX4720"]
    primal = rows(out, "primal")
    assert len(primal) == len(cells.splits["train"])
    r = primal[0]
    assert "PLX4720" in r["prompt"] and loads(r["known"])["drug"] == "PLX4720"
    assert set(loads(r["unknown"])["hidden"]) <= set(symbols)
    task = load_tasks(out)["sensitivity"]
    assert parse_label(f"<answer>{r['answer']}</answer>", task.context.labels) == loads(r["target"])
    assert all(set(x) == set(RL_COLUMNS) for x in rows(out, "rl"))


@pytest.mark.shared_data
def test_papalexi2021_knockout_perturbation(data_dir, tmp_path):
    adata = ad.read_h5ad(shared_file(data_dir, "papalexi2021_thp1_eccite_sceptre/papalexi2021_thp1_lowmoi_299genes.h5ad"))
    keep = adata.obs["perturbation"].isin(["non-targeting", "STAT1", "JAK2", "IFNGR1", "IRF1", "unassigned"])
    adata = adata[keep.to_numpy()].copy()
    cells = to_cells(adata, None, top_k=64, perturbation_key="perturbation", group_key="bio_rep")
    out = tmp_path / "papalexi"
    manifest = build_task_datasets(cells, ["perturbation"], out, max_examples=400)
    ctx = manifest["tasks"]["perturbation"]["context"]
    assert ctx["perturbations"] == ["knockout of IFNGR1", "knockout of IRF1", "knockout of JAK2",
                                    "knockout of STAT1", "control (no perturbation)"]
    primal = rows(out, "primal")
    ids = {loads(r["meta"])["cell_id"] for r in primal}
    assert "unassigned" not in set(adata.obs.loc[list(ids), "perturbation"])
    task = load_tasks(out)["perturbation"]
    for r in rows(out, "dual")[:100]:
        perturbed = r["prompt"].split("looks like this:\n")[-1].split("\n")[0] if "looks like" in r["prompt"] \
            else r["prompt"].split("Perturbed cell sentence: ")[-1].split("\n")[0]
        assert not {"STAT1", "JAK2", "IFNGR1", "IRF1"} & set(perturbed.split())  # targets masked
        assert task.parse_dual(f"<answer>{r['answer']}</answer>") == loads(r["unknown"])
