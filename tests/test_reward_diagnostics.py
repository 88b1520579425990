"""Reward diagnostics (``cellduality diagnose``): the figures behave as defined on a real tasks folder."""

from __future__ import annotations

from datasets import load_from_disk

from cellduality.evaluation.reward_diagnostics import own_answers, right_vs_wrong
from cellduality.tasks import format_response, load_tasks, loads


def _annotation(tasks_dir):  # noqa: F811
    task = load_tasks(tasks_dir)["annotation"]
    rows = [r for r in load_from_disk(str(tasks_dir / "primal"))["train"] if r["task"] == "annotation"]
    truth = {r["unknown"]: loads(r["target"]) for r in rows}
    return task, rows, truth


def _oracle_like(task, truth):
    """A reward that knows the answer (1 right, 0 wrong) -- and a constant one."""

    def perfect(prompts, completions, **columns):
        return [float(task.parse_primal(c) == truth[u]) for c, u in zip(completions, columns["unknown"], strict=True)]

    def constant(prompts, completions, **columns):
        return [0.3] * len(completions)

    return perfect, constant


def test_right_vs_wrong_is_one_for_a_perfect_reward_and_half_for_a_constant(tasks_dir):  # noqa: F811
    task, rows, truth = _annotation(tasks_dir)
    perfect, constant = _oracle_like(task, truth)
    good = right_vs_wrong(task, rows, perfect, seed=0)
    assert good["n"] == len(rows) and good["right_vs_wrong_auc"] == 1.0
    assert good["mean_reward_right"] == 1.0 and good["mean_reward_wrong"] == 0.0
    assert right_vs_wrong(task, rows, constant, seed=0)["right_vs_wrong_auc"] == 0.5


def test_own_answers_auc_zero_spread_and_malformed(tasks_dir):  # noqa: F811
    task, rows, truth = _annotation(tasks_dir)
    perfect, constant = _oracle_like(task, truth)
    labels = list(task.context.labels)
    by_prompt = {r["prompt"]: loads(r["target"]) for r in rows}

    def generate(prompts):  # per group of 4: right, wrong, wrong, malformed
        out = []
        for i, prompt in enumerate(prompts):
            right = by_prompt[prompt]
            wrong = next(label for label in labels if label != right)
            out.append(["no answer", format_response("", right), format_response("", wrong),
                        format_response("", wrong)][i % 4])
        return out

    good = own_answers(task, rows, perfect, generate, num_generations=4)
    assert good["own_answer_auc"] == 1.0 and good["zero_spread_share"] == 0.0
    assert good["malformed_share"] == 0.25 and good["sampled_ground_truth_score"] == 0.25
    flat = own_answers(task, rows, constant, generate, num_generations=4)
    assert flat["zero_spread_share"] == 1.0 and flat["own_answer_auc"] == 0.5
