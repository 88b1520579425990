"""Faithfulness of the reasoning on real cells (pbmc68k_reduced): the teacher's own traces are
100% true, and adversarial texts -- a real gene at a wrong rank, a gene not in the cell, a made-up
gene, a wrong training frequency, a conclusion that contradicts the answer -- are caught."""

from __future__ import annotations

import math

import pytest

from cellduality.faithfulness import (
    FaithfulnessReward,
    rewrite_reasoning,
    summarise,
    training_knowledge,
)
from cellduality.tasks import build_task_datasets, load_tasks
from cellduality.tasks.base import format_response
from cellduality.tasks.builders import load_task_datasets
from cellduality.teacher import OfflineTeacher
from cellduality.teacher.build import request_for_row
from helpers import to_cells


@pytest.fixture(scope="module")
def pbmc(pbmc_small, tmp_path_factory):
    """Tasks folder, its tasks, the teacher fitted on it and the checker's knowledge."""
    out = tmp_path_factory.mktemp("pbmc") / "tasks"
    build_task_datasets(to_cells(pbmc_small, "bulk_labels", top_k=64, raw=True), ["annotation", "generation"], out,
                        max_genes=24, seed=0)
    tasks = load_tasks(out)
    primal = load_task_datasets(out, "primal")
    teacher = OfflineTeacher(tasks).fit(primal["train"])
    return {"dir": out, "tasks": tasks, "test": list(primal["test"]), "teacher": teacher,
            "knowledge": training_knowledge(out, tasks)}


def _teacher_texts(pbmc, task: str, n: int = 3):
    rows = [r for r in pbmc["test"] if r["task"] == task]
    gens = pbmc["teacher"].generate([request_for_row("test", "primal", r) for r in rows], n=n)
    return [(row["prompt"], text) for row, gen in zip(rows, gens, strict=True) for text in gen.texts]


@pytest.mark.parametrize("task", ["annotation", "generation"])
def test_teacher_traces_are_fully_faithful(pbmc, task):
    pairs = _teacher_texts(pbmc, task)
    reports = [pbmc["tasks"][task].check_reasoning(p, t, pbmc["knowledge"][task]) for p, t in pairs]
    stats = summarise(reports)
    assert stats["n_claims"] > 3 * len(pairs)  # ranks, frequencies (and conclusions) are all extracted
    assert stats["faithful_claims"] == 1.0 and stats["faithful_responses"] == 1.0, [
        c for r in reports for c in r.claims if c.verdict != "true"][:3]
    assert stats["rank_claims_exact"] == 1.0
    if task == "annotation":
        assert stats["conclusion_match"] == 1.0
        assert all(r.conclusion is not None for r in reports)


@pytest.fixture(scope="module")
def case(pbmc):
    """One real annotation test prompt, its cell (read back from the prompt) and two labels."""
    task = pbmc["tasks"]["annotation"]
    row = next(r for r in pbmc["test"] if r["task"] == "annotation")
    cell, _ = task.claim_cells(row["prompt"], "")
    assert cell and 2 <= len(cell) <= 24 and " ".join(cell) in row["prompt"]
    absent = sorted(g for g in task.context.genes if g not in cell)[0]
    label, other = task.context.labels[0], task.context.labels[1]
    return {"task": task, "prompt": row["prompt"], "cell": cell, "absent": absent, "label": label, "other": other,
            "profiles": pbmc["knowledge"]["annotation"]}


def _check(case, reasoning, answer=None, knowledge=True):
    text = format_response(reasoning, answer or case["label"])
    return case["task"].check_reasoning(case["prompt"], text, case["profiles"] if knowledge else None)


def test_true_rank_claims_in_every_phrasing(case):
    g1, g2, g3 = case["cell"][:3]
    report = _check(case, f"{g1} at rank 1, {g2} (rank 2) and {g3} is among the top 5. "
                          f"So the cell is most consistent with {case['label']}.")
    assert [c.kind for c in report.claims] == ["rank", "rank", "top", "conclusion"]
    assert report.all_true and report.score == 1.0


def test_real_gene_at_a_wrong_rank(case):
    gene = case["cell"][0]
    report = _check(case, f"{gene} at rank 7 points to {case['label']}.")
    claim = report.claims[0]
    assert claim.verdict == "false" and claim.reason == f"{gene} is at rank 1 of the input cell"
    assert report.score == 0.5 and not report.all_true


def test_gene_not_in_the_cell_and_made_up_gene(case):
    report = _check(case, f"{case['absent']} (rank 2) and FAKEGENE9 at rank 3 matter; {case['absent']} is "
                          f"among the top 10. {case['cell'][-1]} is absent.")
    reasons = [c.reason for c in report.claims]
    assert reasons[0] == f"{case['absent']} is not in the input cell"
    assert "made-up gene" in reasons[1]
    assert all(c.verdict == "false" for c in report.claims) and len(report.claims) == 4
    assert summarise([report])["rank_claims_in_cell"] == 0.0


def test_training_frequency_claims(case):
    profiles, label, gene = case["profiles"], case["label"], case["cell"][0]
    inside, outside = (round(100 * x) for x in profiles.frequency_of(gene, label))
    good = _check(case, f"{gene} at rank 1 ({inside}% of {label} cells, {outside}% elsewhere).")
    assert [c.verdict for c in good.claims] == ["true", "true"]
    wrong = (inside + 40) % 100
    bad = _check(case, f"{gene} (rank 1; in {wrong}% of {label} training cells vs {outside}% of others)")
    assert bad.claims[1].kind == "frequency" and bad.claims[1].verdict == "false"
    assert f"{inside}% of {label}" in bad.claims[1].reason
    # the teacher's label-first phrasing (the label before its number, so decoding can copy the number)
    first = _check(case, f"{gene} (rank 1; among {label} training cells {inside}%, among others {outside}%) and "
                         f"{gene} at rank 1 (in {label} cells {wrong}%, elsewhere {outside}%).")
    assert [(c.kind, c.verdict) for c in first.claims if c.kind == "frequency"] == [("frequency", "true"),
                                                                                   ("frequency", "false")]
    unknown = _check(case, f"{gene} at rank 1 ({wrong}% of {label} cells, {outside}% elsewhere).", knowledge=False)
    assert unknown.claims[1].verdict == "unchecked" and unknown.score == 1.0  # unchecked claims are not scored
    assert unknown.notes and "unchecked" in unknown.notes[0]


def test_conclusion_that_contradicts_the_answer(case):
    report = _check(case, f"{case['cell'][0]} at rank 1. This profile matches {case['other']} best.")
    assert report.conclusion == case["other"]
    assert report.conclusion_matches is False and report.claims[-1].reason == f"the answer is {case['label']}"
    malformed = case["task"].check_reasoning(case["prompt"], f"<think> It matches {case['label']}. </think>")
    assert malformed.conclusion_matches is False  # no valid <answer> to agree with


def test_mark_drop_keep(case):
    g1, g2 = case["cell"][:2]
    report = _check(case, f"{g1} at rank 1 is high. {g2} at rank 9 is also high. Together these point to "
                          f"{case['label']}.")
    marked = rewrite_reasoning(report, "mark")
    assert f"[unverified: {g2} at rank 9 — {g2} is at rank 2 of the input cell]" in marked
    assert f"{g1} at rank 1 is high." in marked
    dropped = rewrite_reasoning(report, "drop")
    assert g2 not in dropped and dropped.startswith(f"{g1} at rank 1 is high.") and case["label"] in dropped
    assert rewrite_reasoning(report, "keep") == report.reasoning


def test_reward_is_label_free_and_reads_chat_prompts(pbmc, case):
    reward = FaithfulnessReward(pbmc["tasks"], pbmc["knowledge"])
    prompt, teacher_text = _teacher_texts(pbmc, "annotation", n=1)[0]
    chat = [{"role": "user", "content": prompt}]  # conversational prompt: the cell is still found
    wrapped = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"  # chat-template text
    gene = case["cell"][0]
    lying = format_response(f"{gene} at rank 4. It matches {case['label']}.", case["label"])
    scores = reward([chat, wrapped, case["prompt"], case["prompt"]],
                    [teacher_text, teacher_text, lying, format_response("", case["label"])],
                    task=["annotation"] * 4)  # no target column: nothing label-based is read
    assert scores[:2] == [1.0, 1.0]
    assert scores[2] == 0.5  # false rank, true conclusion
    assert scores[3] == 0.0  # no claim is not rewarded over true claims
    assert not math.isnan(sum(scores))


def test_reward_scores_any_text_and_lets_bugs_through(pbmc, case, monkeypatch):
    """Model text is never an error (the claim parser is forgiving); a bug in the checker is not a 0."""
    import random

    import cellduality.faithfulness as faithfulness

    reward = FaithfulnessReward(pbmc["tasks"], pbmc["knowledge"])
    words = ["<think>", "</think>", "<answer>", "</answer>", "rank", "at", "is", "in", "%", "of", "cells", ".", ",",
             "-1", "0", "99999999999999999999", "1e309", "nan", *case["cell"][:4], case["absent"], case["label"], "ZZZ9"]
    rng = random.Random(0)
    texts = ["", "<think>", "</answer>", *(" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(200)),
             *(format_response(" ".join(rng.choices(words, k=rng.randint(1, 40))), case["label"]) for _ in range(200)),
             format_response(f"{case['cell'][0]} at rank 1.", case["label"])]
    scores = reward([case["prompt"]] * len(texts), texts, task=["annotation"] * len(texts))
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[-1] == 1.0

    def broken(reasoning, ctx):  # noqa: ANN001, ANN202
        raise KeyError("bug in the checker")

    monkeypatch.setattr(faithfulness, "check_text", broken)
    with pytest.raises(KeyError, match="bug in the checker"):
        reward([case["prompt"]], [texts[5]], task=["annotation"])


def test_evaluation_reports_faithfulness_beside_accuracy(pbmc, tmp_path):
    import pandas as pd

    from cellduality.evaluation.evaluate import evaluate_generate

    teacher = dict(_teacher_texts(pbmc, "annotation", n=1))
    lying = {p: t.replace("(rank 1;", "(rank 2;").replace("at rank 1 ", "at rank 2 ") for p, t in teacher.items()}
    runs = {}
    for name, answers in (("teacher", teacher), ("lying", lying)):
        runs[name] = evaluate_generate(lambda ps, a=answers: [a[p] for p in ps], pbmc["dir"], tmp_path / name,
                                       tasks=["annotation"], baselines=False, reward_validity=False)["annotation"]
    assert runs["teacher"]["faithful_claims"] == 1.0 and runs["teacher"]["conclusion_match"] == 1.0
    assert runs["lying"]["faithful_claims"] < 1.0 and runs["lying"]["faithful_responses"] < 1.0
    assert runs["lying"]["accuracy"] == runs["teacher"]["accuracy"]  # same answers, less faithful reasoning
    table = pd.read_csv(tmp_path / "lying" / "predictions_annotation.csv")
    assert {"faithfulness", "false_claims", "conclusion_matches"} <= set(table.columns)
    assert table["false_claims"].sum() > 0
    report = (tmp_path / "teacher" / "report.md").read_text()
    assert "true claims (%)" in report and "100.00" in report
    from cellduality.faithfulness import predictions_faithfulness

    again = predictions_faithfulness(tmp_path / "lying", pbmc["dir"])["annotation"]  # re-read from the CSV
    assert again["faithful_claims"] == runs["lying"]["faithful_claims"]


def test_sft_ceiling(pbmc, tmp_path):
    from cellduality.faithfulness import sft_faithfulness
    from cellduality.teacher.build import build_sft
    from cellduality.teacher.config import TeachConfig

    build_sft(pbmc["dir"], tmp_path / "sft", TeachConfig(n=2, max_examples=30, max_test_examples=5),
              teacher=pbmc["teacher"])
    ceiling = sft_faithfulness(tmp_path / "sft", pbmc["dir"])
    assert set(ceiling) == {"annotation", "generation"}
    assert all(m["faithful_claims"] == 1.0 and m["n_claims"] > 30 for m in ceiling.values())


def test_grpo_adds_the_faithfulness_reward_with_its_weight(pbmc, tmp_path):
    from cellduality.faithfulness import faithfulness_rewards
    from cellduality.training.grpo import GRPOSettings, build_grpo_config

    assert faithfulness_rewards(pbmc["tasks"], pbmc["dir"], 0.0) == []
    (reward,) = faithfulness_rewards(pbmc["tasks"], pbmc["dir"], 0.5)
    assert reward.__name__ == "faithfulness" and set(reward.knowledge) == {"annotation", "generation"}
    on = build_grpo_config(GRPOSettings(faithfulness_weight=0.5), tmp_path / "on", target="cpu")
    off = build_grpo_config(GRPOSettings(), tmp_path / "off", target="cpu")
    assert list(on.reward_weights) == [1.0, 0.5] and off.reward_weights is None


@pytest.mark.parametrize("mode", ["mark", "drop", "keep"])
def test_annotate_scores_and_marks_false_claims(pbmc_small, pbmc, mode):
    from cellduality.inference import annotate
    from test_inference import FakeModel

    task = pbmc["tasks"]["annotation"]
    label = task.context.labels[0]

    def sample(prompts):  # cites the prompt's first gene truly and its second at a wrong rank
        outs = []
        for p in prompts:
            cell, _ = task.claim_cells(p, "")
            outs.append(format_response(f"{cell[0]} at rank 1 is high. {cell[1]} at rank 9 is high too. "
                                        f"Together these point to {label}.", label))
        return outs

    model = FakeModel({"annotation": task}, sample, lambda ps: [format_response("", "CD74")] * len(ps))
    out = annotate(pbmc_small[:12].copy(), model, n_samples=2, false_claims=mode, tasks_dir=str(pbmc["dir"]),
                   method="rerank")
    assert out.obs["cellduality_faithfulness"].round(4).eq(round(2 / 3, 4)).all()
    assert (out.obs["cellduality_false_claims"] == 1).all()
    reasoning = out.obs["cellduality_reasoning"]
    if mode == "mark":
        assert reasoning.str.contains(r"\[unverified: \S+ at rank 9 — \S+ is at rank 2 of the input cell\]").all()
    elif mode == "drop":
        assert not reasoning.str.contains("rank 9").any() and reasoning.str.contains("rank 1").all()
    else:
        assert reasoning.str.contains("rank 9").all() and not reasoning.str.contains("unverified").any()
    info = out.uns["cellduality"]["annotation"]["faithfulness"]
    assert info["false_claims"] == mode and info["cells_with_false_claims"] == 12
    assert info["training_claims"].startswith("checked against")
