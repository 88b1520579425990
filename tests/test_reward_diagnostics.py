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


def test_reward_preference_reads_where_the_reward_pulls_and_how_flat_it_is(tasks_dir):  # noqa: F811
    """A reward that puts 0.9 on one label pulls every cell there; a flat one has a top value of 1/K."""
    from cellduality.adaptation.diagnostics import verdict
    from cellduality.evaluation.reward_diagnostics import reward_preference

    task, rows, truth = _annotation(tasks_dir)
    keys = [task.render_answer(c) for c in task.answer_candidates()]
    favourite = keys[-1]
    pulled = [r for r in rows if task.render_answer(loads(r["target"])) != favourite]
    assert pulled, "the fixture needs cells of another label than the favourite"

    def peaked(prompts, completions, **columns):
        return [0.9 if task.parse_primal(c) == favourite else 0.1 / (len(keys) - 1) for c in completions]

    def flat(prompts, completions, **columns):
        return [1.0 / len(keys)] * len(completions)

    pull = reward_preference(task, rows, peaked)
    assert pull["reward_preferred"] == {favourite: len(rows)} and abs(pull["reward_top_mean"] - 0.9) < 1e-9
    assert pull["reward_prefers_other_share"] == len(pulled) / len(rows) and pull["reward_flat"] == 1 / len(keys)
    level = reward_preference(task, rows, flat)
    assert abs(level["reward_top_mean"] - 1 / len(keys)) < 1e-12
    assert "hardly reads the label" in verdict("annotation", {"self_consistency_auc": 0.9, **level})
    sharp = verdict("annotation", {"self_consistency_auc": 0.9, "zero_spread_share": 0.0, **pull})
    assert "hardly" not in sharp and f"{favourite} {len(rows)}" in sharp


def test_label_free_diagnostics_report_where_the_likelihood_reward_pulls(tasks_dir, pbmc_small, monkeypatch):  # noqa: F811
    """``adapt``'s diagnostics add the pull of the likelihood reward: favourite labels over the cells
    the model answered, against the model's own answers (a fake model answers the first label)."""
    from cellduality.adaptation.diagnostics import label_free_diagnostics
    from cellduality.adaptation.rows import build_rows
    from cellduality.training.grpo import GRPOSettings

    tasks = load_tasks(tasks_dir)
    task = tasks["annotation"]
    keys = [task.render_answer(c) for c in task.answer_candidates()]

    def peaked(prompts, completions, **columns):
        return [0.9 if task.parse_primal(c) == keys[-1] else 0.1 / (len(keys) - 1) for c in completions]

    class FirstLabel:
        model = tokenizer = None

        def generator(self, **_):
            return lambda prompts: [format_response("", keys[0])] * len(prompts)

    monkeypatch.setattr("cellduality.evaluation.reward_diagnostics.make_duality_reward", lambda *a, **k: peaked)
    examples = build_rows(pbmc_small[:20], {"annotation": task}, seed=0).examples
    report = label_free_diagnostics(FirstLabel(), {"annotation": task}, examples,
                                    settings=GRPOSettings(num_generations=2), max_examples=8)["tasks"]["annotation"]
    assert report["cells"] == 8 and report["predicted"] == {keys[0]: 8}
    assert report["reward_preferred"] == {keys[-1]: 8} and report["reward_prefers_other_share"] == 1.0
    assert abs(report["reward_top_mean"] - 0.9) < 1e-9 and report["reward_flat"] == 1 / len(keys)
