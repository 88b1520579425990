"""The one dual pass (cellduality.duality): the reward and inference reranking read the dual alike."""

from __future__ import annotations

import numpy as np
import pytest

from cellduality.duality import DualQuery, dual_pass
from cellduality.inference import duality_rerank
from cellduality.rewards import DualityReward
from cellduality.tasks.base import Example, dumps, format_response
from cellduality.tasks.text import genes_of
from helpers import class_profiles, knowledge_dual


class Recorder:
    """A dual policy that records every batch it is asked for."""

    def __init__(self, dual):
        self.dual, self.calls = dual, []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls.append(list(prompts))
        return self.dual(prompts)


@pytest.fixture(scope="module")
def cells_and_answers(pbmc_task):
    """20 test cells of pbmc68k, each with a primal answer: the true label for half, a wrong one for the rest."""
    cells, task = pbmc_task
    labels = cells.obs["bulk_labels"].astype(str).to_numpy()
    test = list(cells.splits["test"])[:20]
    examples = [Example(id=str(i), task="annotation", input={"cell": genes_of(cells.sentences[i], 24)},
                        target=None, seed=1000 + i) for i in test]
    rng = np.random.default_rng(0)
    answers = [labels[i] if k % 2 == 0 else rng.choice([x for x in task.context.labels if x != labels[i]])
               for k, i in enumerate(test)]
    return examples, [str(a) for a in answers]


def test_reward_and_reranker_give_the_same_dual_scores(pbmc_task, cells_and_answers):
    cells, task = pbmc_task
    examples, answers = cells_and_answers
    dual = knowledge_dual(task, class_profiles(cells, task))
    splits = [task.split(ex) for ex in examples]

    reward_dual = Recorder(dual)
    columns = {"task": ["annotation"] * len(examples), "known": [dumps(k) for k, _ in splits],
               "unknown": [dumps(u) for _, u in splits], "seed": [ex.seed for ex in examples]}
    reward = DualityReward({"annotation": task}, reward_dual)
    rewards = reward([""] * len(examples), [format_response("", a) for a in answers], **columns)

    rerank_dual = Recorder(dual)
    by_prompt = {task.primal_prompt(ex): format_response("", a) for ex, a in zip(examples, answers, strict=True)}
    ranked = duality_rerank(task, examples, lambda ps: [by_prompt[p] for p in ps], rerank_dual, n_samples=1)

    direct = dual_pass([DualQuery(task, a, k, ex.seed, u) for a, (k, u), ex in zip(answers, splits, examples,
                                                                                   strict=True)], dual)
    assert len(reward_dual.calls) == len(rerank_dual.calls) == 1  # one batched generate call each
    assert reward_dual.calls == rerank_dual.calls == [[r.prompt for r in direct]]  # the same dual prompts
    assert rewards == [r.confidence for r in ranked] == [r.scores[a] for r, a in zip(ranked, answers, strict=True)]
    assert rewards == [r.score for r in direct]
    # the scores carry information: the dual rebuilds the hidden genes better after the true label
    assert np.mean(rewards[::2]) > np.mean(rewards[1::2]) > 0
    assert [r.answer for r in ranked] == answers and reward.last_stats["n_dual"] == len(examples)


def test_dual_pass_parses_forgivingly_and_raises_on_bugs(pbmc_task, cells_and_answers, monkeypatch):
    _, task = pbmc_task
    examples, answers = cells_and_answers
    known, unknown = task.split(examples[0])
    query = DualQuery(task, answers[0], known, examples[0].seed, unknown)
    assert dual_pass([], lambda ps: pytest.fail("no query: generate must not run")) == []

    hidden = " ".join(unknown["hidden"])
    results = dual_pass([query, query, DualQuery(task, answers[0], known, examples[0].seed)],
                        lambda ps: [format_response("", hidden), "no answer block", format_response("", hidden)])
    assert [r.score for r in results] == [1.0, 0.0, None]  # exact rebuild, malformed, read-back only (no x_u)
    assert [r.parsed for r in results] == [True, False, True] and results[2].guess == {"hidden": unknown["hidden"]}

    with pytest.raises(ValueError, match="1 texts for 2 dual prompts"):
        dual_pass([query, query], lambda ps: ["x"])
    monkeypatch.setattr(task, "distance", lambda truth, guess: 1.5)
    with pytest.raises(ValueError, match="outside"):
        dual_pass([query], lambda ps: [format_response("", hidden)])


def test_reward_refuses_rows_without_x_u(pbmc_task, cells_and_answers):
    _, task = pbmc_task
    examples, answers = cells_and_answers
    reward = DualityReward({"annotation": task}, lambda ps: ["x"] * len(ps))
    with pytest.raises(ValueError, match="no 'unknown' value"):
        reward([""], [format_response("", answers[0])], task=["annotation"], known=["{}"], seed=[0])
