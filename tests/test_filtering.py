"""Rejection sampling, rank-aware filtering and dual-row filtering on hand-built cases."""

from __future__ import annotations

from cellduality.rewards import rwjs
from cellduality.tasks import TaskContext, get_task
from cellduality.teacher.filtering import Verdict, judge_dual, judge_primal, select

GENES = frozenset({"CD3D", "CD3E", "IL7R", "NKG7", "GNLY", "CD79A", "MS4A1", "LYZ"})


def _annotation():
    return get_task("annotation", TaskContext(labels=("B cell", "T cell", "NK cell"), genes=GENES))


def _generation():
    return get_task("generation", TaskContext(labels=("B cell", "T cell"), genes=GENES))


def test_rejection_sampling_keeps_exact_label_only():
    task = _annotation()
    right = judge_primal(task, "T cell", "<think> CD3D (rank 1) marks T cells. </think>\n<answer>t cell</answer>", 0.5)
    assert right.accepted and right.score == 1.0
    assert right.completion == "<think> CD3D (rank 1) marks T cells. </think> <answer> T cell </answer>"
    wrong = judge_primal(task, "T cell", "<think> NKG7. </think> <answer> NK cell </answer>", 0.0)
    assert not wrong.accepted and wrong.reason == "wrong answer"  # threshold never rescues a classifier
    assert judge_primal(task, "T cell", "<think> x </think> <answer> T or NK cell </answer>", 0.0).reason == "malformed"
    assert judge_primal(task, "T cell", "T cell", 0.0).reason == "malformed"
    bare = judge_primal(task, "T cell", "<answer> T cell </answer>", 0.0)
    assert not bare.accepted and bare.reason == "no reasoning"


def test_rank_aware_filtering_uses_rwjs_threshold():
    task = _generation()
    target = ["CD3D", "CD3E", "IL7R"]
    close = "<think> T cells lead with CD3D. </think> <answer> CD3E CD3D NKG7 </answer>"
    score = rwjs(target, ["CD3E", "CD3D", "NKG7"])  # 0.421 (the docstring example of rwjs)
    assert abs(judge_primal(task, target, close, 0.4).score - score) < 1e-9
    assert judge_primal(task, target, close, 0.4).accepted
    below = judge_primal(task, target, close, 0.5)
    assert not below.accepted and below.reason == "below threshold"
    unknown_genes = judge_primal(task, target, "<think> r </think> <answer> FOO BAR </answer>", 0.0)
    assert unknown_genes.reason == "malformed"


def test_dual_keeps_agreeing_traces_with_the_canonical_reference():
    task = _generation()  # dual: cell sentence -> cell type
    unknown = {"cell_type": "T cell"}
    ok = judge_dual(task, unknown, "T cell", "<think> CD3D at rank 1. </think> <answer> t cell </answer>", 0.9)
    assert ok.accepted and ok.completion.endswith("<answer> T cell </answer>")
    assert judge_dual(task, unknown, "T cell", "<think> r </think> <answer> B cell </answer>", 0.9).reason == "wrong answer"
    ann = _annotation()  # dual: inpaint hidden genes, scored by RWJS
    hidden = {"hidden": ["CD3E", "IL7R"]}
    near = "<think> T cells express CD3E and IL7R. </think> <answer> CD3E LYZ </answer>"
    assert not judge_dual(ann, hidden, "CD3E IL7R", near, 0.9).accepted
    assert judge_dual(ann, hidden, "CD3E IL7R", near, 0.3).completion.endswith("<answer> CD3E IL7R </answer>")


def test_select_best_first_distinct_and_capped():
    verdicts = [Verdict(True, 0.5, "accepted", "a"), Verdict(False, 0.9, "below threshold"),
                Verdict(True, 0.8, "accepted", "b"), Verdict(True, 0.8, "accepted", "b"),
                Verdict(True, 0.8, "accepted", "c")]
    assert [v.completion for v in select(verdicts, 1)] == ["b"]
    assert [v.completion for v in select(verdicts, 5)] == ["b", "c", "a"]
    assert select([Verdict(False, 0.0, "malformed")], 3) == []
