"""Fast annotation: labels ranked by likelihood with a shared prompt pass, reasoning only when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cellduality.inference.fast import answer_prompts, answer_split, classify_fast, taught_form
from cellduality.models.candidates import score_candidates
from cellduality.models.generation import RequireReasoning
from cellduality.models.scoring import score_continuations
from cellduality.tasks.base import (
    ANSWER_PROMPT,
    PRIMAL_DIRECT,
    direct_prompt,
    direct_response,
    format_response,
)


def _reference(mdl, prompts, prefixes, candidates):
    pairs = [(p, q + c) for p, q in zip(prompts, prefixes, strict=True) for c in candidates]
    full = score_continuations(mdl.model, mdl.tokenizer, [p for p, _ in pairs], [c for _, c in pairs])
    return np.array([s.logprob for s in full]).reshape(len(prompts), len(candidates))


@pytest.mark.parametrize("head", ["", "Possible types: CD14+ Monocyte, CD19+ B, CD34+, Dendritic.\nAnswer directly.\n"])
@pytest.mark.parametrize("route", ["trie-sdpa", "trie-eager", "one-call-per-candidate"])
def test_shared_prompt_pass_equals_one_sequence_per_label(tiny_model, monkeypatch, route, head):
    """Every route, with and without a head all prompts share (then run once, before the rows)."""
    from cellduality.models import candidates as module

    mdl, prompts = tiny_model
    prompts = [head + p for p in prompts]
    runs, run = [], module._SharedHead.run
    monkeypatch.setattr(module._SharedHead, "run", lambda *a: runs.append(len(a[1])) or run(*a))
    original = mdl.model.config._attn_implementation
    monkeypatch.setattr(module, "_takes_custom_masks", lambda model: route.startswith("trie"))
    if route == "trie-eager":  # eager attention adds the 4D mask to its scores: it must be additive
        mdl.model.set_attn_implementation("eager")
    try:
        _check_against_reference(mdl, prompts)
    finally:
        mdl.model.set_attn_implementation(original)
    # the head ran once per call, as its own pass, only where it exists and the kernel takes 4D masks
    assert bool(runs) == (bool(head) and route.startswith("trie")) and all(n >= 15 for n in runs)


def _check_against_reference(mdl, prompts):
    task = mdl.task("annotation")
    prompts = prompts[:7] + [prompts[0][:80]]  # unequal lengths: left padding must not change a score
    prefix, lead, tail = answer_split("")
    reasoned, _, _ = answer_split("CD74 is high")
    prefixes = [prefix] * 4 + [reasoned] * 4
    candidates = [f"{lead}{label}{tail}" for label in task.context.labels]
    got = score_candidates(mdl.model, mdl.tokenizer, prompts, prefixes, candidates, max_tokens_per_batch=300)
    ref = _reference(mdl, prompts, prefixes, candidates)
    np.testing.assert_allclose(got.candidates + got.prefix[:, None], ref, atol=2e-4)
    assert (got.prefix < 0).all() and np.allclose(got.posterior().sum(1), 1)
    mdl.model.train()  # scoring runs in eval mode and restores the caller's mode
    score_candidates(mdl.model, mdl.tokenizer, prompts[:2], prefixes[:2], candidates)
    assert mdl.model.training


def test_candidate_trie_shares_label_prefixes():
    from cellduality.models.candidates import CandidateTree

    tree = CandidateTree.build([[5, 6, 9], [5, 7, 9], [8, 9], [4]])
    assert tree.tokens == [5, 6, 7, 8] and tree.depths == [0, 1, 1, 0]  # the shared [5] runs once
    first, second = tree.paths[0], tree.paths[1]
    assert first[0] == second[0] and first[1] != second[1] and tree.paths[3] == []
    assert tree.sees[first[1], first[0]] and not tree.sees[first[1], second[1]]  # its ancestor, not a sibling


def test_answer_split_rebuilds_the_response():
    prefix, lead, tail = answer_split("CD3E at rank 1.")
    assert prefix + lead + "CD19+ B" + tail == format_response("CD3E at rank 1.", "CD19+ B")
    prefix, lead, tail = answer_split("")  # no reasoning: the answer-only form, no <think> block
    assert prefix + lead + "CD19+ B" + tail == direct_response("CD19+ B") and prefix == "<answer>"


def _cells(pbmc_task, n):
    cells, task = pbmc_task
    return [task.split(ex) for ex in task.make_examples(cells, range(30), seed=0)[:n]]  # the fixture's examples


@pytest.mark.parametrize("form", [PRIMAL_DIRECT, ANSWER_PROMPT])
def test_fast_labels_are_the_likelihood_argmax_and_explain_the_least_confident(tiny_model, pbmc_task, monkeypatch,
                                                                                form):
    from cellduality.inference import fast

    mdl, prompts = tiny_model
    task = mdl.task("annotation")
    cells = _cells(pbmc_task, 12)
    monkeypatch.setattr(fast, "taught_form", lambda *a: form)  # what the model's files would say
    prefix, lead, tail = answer_split("")
    # the answer-only form has its own prompt: the primal one + the instruction, or the task's own
    direct = ([direct_prompt(p) for p in prompts[:12]] if form == PRIMAL_DIRECT
              else [task.answer_only_prompt(k, u) for k, u in cells])
    ref = _reference(mdl, direct, [prefix] * 12, [f"{lead}{lb}{tail}" for lb in task.context.labels])
    result = classify_fast(task, mdl, prompts[:12], cells, explain_least_confident=3, max_new_tokens=24)
    assert result.info["answer_form"] == form
    assert result.explained.sum() == 3 and result.info["explained"] == 3
    fast = ~result.explained
    assert [task.context.labels[i] for i in ref.argmax(1)[fast]] == [lb for lb, f in zip(result.labels, fast,
                                                                                         strict=True) if f]
    posterior = np.exp(ref - ref.max(1, keepdims=True))
    posterior /= posterior.sum(1, keepdims=True)
    np.testing.assert_allclose(result.confidence[fast], posterior.max(1)[fast], atol=1e-4)
    assert result.confidence[fast].min() >= posterior.max(1)[result.explained].max() - 1e-6  # least confident
    assert all(r == "" for r, e in zip(result.reasoning, result.explained, strict=True) if not e)


def test_an_explained_cell_keeps_the_ranked_label_and_records_the_written_answer(tiny_model, pbmc_task,
                                                                                  monkeypatch):
    """The label is ranked after the reasoning; the answer the text wrote is kept and its differences counted."""
    from cellduality.inference import fast

    mdl, prompts = tiny_model
    task = mdl.task("annotation")
    cells = _cells(pbmc_task, 4)
    labels = task.context.labels
    monkeypatch.setattr(fast, "taught_form", lambda *a: PRIMAL_DIRECT)
    texts: list[str] = []
    monkeypatch.setattr(fast, "generate_sorted", lambda mdl, prompts, **kw: texts[: len(prompts)])
    texts[:] = ["<think> CD74 at rank 1. </think> <answer> Neuron"] * 4  # no candidate written
    ranked = classify_fast(task, mdl, prompts[:4], cells, explain=True, max_new_tokens=8)
    assert ranked.labels == [labels[k] for k in ranked.posterior.argmax(1)] and ranked.written == [None] * 4
    assert ranked.info["explained_unparsed"] == 4 and ranked.info["explained_written_differs"] == 0
    # the same reasoning, now answering a candidate the ranking did not choose (cells 0-2)
    other = [next(lb for lb in labels if lb != ranked.labels[i]) for i in range(3)]
    texts[:3] = [format_response("CD74 at rank 1.", lb) for lb in other]
    result = classify_fast(task, mdl, prompts[:4], cells, explain=True, max_new_tokens=8)
    assert result.labels == ranked.labels and result.written == [*other, None]
    assert result.info["explained_unparsed"] == 1 and result.info["explained_written_differs"] == 3
    assert result.reasoning[0] == "CD74 at rank 1."
    np.testing.assert_allclose(result.posterior, ranked.posterior)
    np.testing.assert_allclose(result.confidence, result.posterior.max(1))


def test_a_model_without_answer_only_rows_warns_and_generates(tiny_model, pbmc_task):
    mdl, prompts = tiny_model
    lines: list[str] = []
    result = classify_fast(mdl.task("annotation"), mdl, prompts[:3], _cells(pbmc_task, 3), direct=False,
                           max_new_tokens=8, warn=lines.append)
    assert len(lines) == 1 and "answer-only" in lines[0] and result.explained.all()
    assert set(result.labels) <= set(mdl.task("annotation").context.labels)


def test_taught_form_reads_the_summary_the_sft_data_or_the_parent(tmp_path):
    from datasets import Dataset, DatasetDict

    def model(name, **info):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cellduality.json").write_text(json.dumps(info))
        return folder

    new = model("new", summary={"directions": {"primal/annotation": 5, f"{ANSWER_PROMPT}/annotation": 5}})
    older = model("older", summary={"directions": {"primal/annotation": 5, f"{PRIMAL_DIRECT}/annotation": 5}})
    none = model("none", summary={"directions": {"primal/annotation": 5, "dual_direct/annotation": 5}})
    data = tmp_path / "sft_data"
    DatasetDict({"train": Dataset.from_list([{"direction": PRIMAL_DIRECT, "task": "annotation"}])}).save_to_disk(
        str(data))
    legacy = model("legacy", sft_data=str(data))
    grpo = model("grpo", parent_model=str(legacy))
    assert taught_form(new, "annotation") == ANSWER_PROMPT and taught_form(older, "annotation") == PRIMAL_DIRECT
    assert taught_form(none, "annotation") == "" and taught_form(new, "sensitivity") == ""
    assert taught_form(legacy, "annotation") == PRIMAL_DIRECT and taught_form(legacy, "sensitivity") == ""
    assert taught_form(grpo, "annotation") == PRIMAL_DIRECT
    assert taught_form(model("unknown"), "annotation") is None


def test_answer_prompts_follow_the_taught_form(tiny_model, pbmc_task):
    """The default form is the primal prompt + the instruction; the opt-in one puts the shared head first."""
    mdl, prompts = tiny_model
    task, cells = mdl.task("annotation"), _cells(pbmc_task, 4)
    assert answer_prompts(task, PRIMAL_DIRECT, prompts[:4], cells) == [direct_prompt(p) for p in prompts[:4]]
    new = answer_prompts(task, ANSWER_PROMPT, prompts[:4], cells)
    assert all(p.startswith("Candidate cell types: ") for p in new) and len(set(new)) == 4
    with pytest.raises(ValueError, match="4 prompts but 3 cells"):
        answer_prompts(task, ANSWER_PROMPT, prompts[:4], cells[:3])


def test_require_reasoning_forbids_an_empty_think_block(tiny_model):
    mdl, _ = tiny_model
    tok = mdl.tokenizer
    rule = RequireReasoning(tok)
    assert rule.active
    think = tok.convert_tokens_to_ids("<think>")
    close = tok.convert_tokens_to_ids("</think>")
    ids = torch.tensor([[5, think], [5, 6]])
    scores = rule(ids, torch.zeros(2, len(tok)))
    assert scores[0, close] == float("-inf") and scores[1, close] == 0
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
    assert blank and torch.isinf(scores[0, blank]).all() and torch.isfinite(scores[0]).sum() > 10


def test_cli_refuses_explain_with_rerank(tiny_model, pbmc_small, tmp_path, capsys):
    from cellduality.cli.main import main

    mdl, _ = tiny_model
    path = tmp_path / "cells.h5ad"
    pbmc_small[:5].copy().write_h5ad(path)
    with pytest.raises(SystemExit) as exit_:
        main(["annotate", str(path), "--model", str(mdl.path), "--out", str(tmp_path / "o.h5ad"), "--method", "rerank",
              "--explain"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--method fast" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5ad").exists()


def test_cli_fast_annotate_writes_labels_and_confidence(tiny_model, pbmc_small, tmp_path, capsys):
    import anndata as ad

    from cellduality.cli.main import main

    mdl, _ = tiny_model
    path = tmp_path / "cells.h5ad"
    pbmc_small[:6].copy().write_h5ad(path)
    with pytest.raises(SystemExit) as exit_:
        main(["annotate", str(path), "--model", str(mdl.path), "--out", str(tmp_path / "o.h5ad"),
              "--explain-least-confident", "2", "--batch-size", "4"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    assert set(out.obs["cellduality_cell_type"]) <= set(mdl.task("annotation").context.labels)
    assert out.obs["cellduality_confidence"].between(0, 1).all() and out.obs["cellduality_explained"].all()
    assert "answer-only" in captured.out  # this random model was not taught the answer-only rows: it generates
    assert "Loading weights" not in captured.out + captured.err  # third-party bars are silenced by the CLI
    # what each explained cell's text answered is kept; differences and non-candidates are counted and printed
    run = out.uns["cellduality"]["annotation"]
    differs, unparsed = run["explained_written_differs"], run["explained_unparsed"]
    written = out.obs["cellduality_reasoning_answer"].astype(str)
    assert (written == "").sum() == unparsed and (written[written != ""] != out.obs["cellduality_cell_type"].astype(
        str)[written != ""]).sum() == differs
    line = f"Of 6 explained cells, {differs} wrote another answer than the label ranked after their reasoning and " \
           f"{unparsed} wrote no candidate"
    assert (line in " ".join(captured.out.split())) == (differs + unparsed > 0)


def test_evaluate_fast_labels_answers_classification_by_ranking(sft_dir, tasks_dir, tmp_path, capsys):  # noqa: F811
    import pandas as pd

    from cellduality.evaluation.evaluate import evaluate_model
    from cellduality.tasks import load_tasks

    results = evaluate_model(sft_dir, tasks_dir, tmp_path / "eval", tasks=["annotation"], max_examples=6,
                             baselines=False, reward_validity=False, max_new_tokens=8, fast_labels=True)
    table = pd.read_csv(tmp_path / "eval" / "predictions_annotation.csv", keep_default_na=False)
    labels = set(load_tasks(tasks_dir)["annotation"].context.labels)
    assert len(table) == 6 and set(table["parsed"]) <= labels  # every answer is a valid label, none unparsed
    assert 0 <= results["annotation"]["accuracy"] <= 1
    assert "answer-only" in capsys.readouterr().err  # an untaught model says why it generates instead


def test_gpu_batch_tokens_follow_free_memory_and_model_size():
    """A small model gets the largest batches, a 3B one on a 16 GB card a few thousand tokens."""
    from types import SimpleNamespace

    from cellduality.models.candidates import GPU_BATCH_TOKENS_RANGE, gpu_batch_tokens

    base = SimpleNamespace(hidden_size=768, num_attention_heads=12, num_hidden_layers=12, intermediate_size=2048)
    three_b = SimpleNamespace(hidden_size=3072, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                              num_hidden_layers=28, intermediate_size=8192)
    gib = 1 << 30
    low, high = GPU_BATCH_TOKENS_RANGE
    assert gpu_batch_tokens(base, 138 * gib) == high
    small_card = gpu_batch_tokens(three_b, 9 * gib)
    assert low < small_card < 16384
    # per token: 3 x 2 x 28 layers x 8 heads x 128 x 2 bytes + 4 x (3072 + 8192) x 2 bytes
    assert small_card == int(0.25 * 9 * gib / (3 * 2 * 28 * 8 * 128 * 2 + 4 * (3072 + 8192) * 2))
    assert gpu_batch_tokens(three_b, gib // 10) == low
