"""Teacher-forced scoring and the likelihood duality reward (one forward pass, no sampling)."""

from __future__ import annotations

import math

import pytest
import torch

from cellduality.models.scoring import ContinuationScore, score_continuations
from cellduality.rewards import DualLikelihoodReward, likelihood_reward
from cellduality.tasks import TaskContext, dumps, format_response, get_task
from cellduality.tasks.base import DIRECT_INSTRUCTION, direct_response

LABELS = ("B cell", "NK cell", "T cell")
GENES = frozenset(f"G{i}" for i in range(20))


@pytest.fixture(scope="module")
def tiny():
    from cellduality.models import load_model

    texts = ["This is a B cell. hidden ___ G1 G2 <think> </think> <answer> G3 G4 </answer>"]
    model, tokenizer = load_model("tiny", tokenizer_texts=texts, genes=sorted(GENES))
    torch.manual_seed(0)
    return model, tokenizer


def test_scores_match_a_manual_forward_pass_and_ignore_padding(tiny):
    from cellduality.models.loading import format_prompt

    model, tokenizer = tiny
    model.train()
    prompts = ["This is a B cell.", "hidden ___ G1 G2 G5 G6 G7 G8 G9 G10 G11 G12"]
    targets = ["<answer> G3 G4 </answer>", "<answer> G3 </answer>"]
    batched = score_continuations(model, tokenizer, prompts, targets)
    one_by_one = [score_continuations(model, tokenizer, [p], [t])[0] for p, t in zip(prompts, targets, strict=True)]
    for a, b in zip(batched, one_by_one, strict=True):
        assert a.n_tokens == b.n_tokens and a.logprob == pytest.approx(b.logprob, abs=1e-4)
    # manual: sum of log-softmax at the continuation tokens
    p_ids = tokenizer(text=[format_prompt(tokenizer, prompts[0])])["input_ids"][0]
    c_ids = tokenizer(text=[targets[0]], add_special_tokens=False)["input_ids"][0]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    manual = sum(float(logp[len(p_ids) - 1 + j, c]) for j, c in enumerate(c_ids))
    assert batched[0].logprob == pytest.approx(manual, abs=1e-4)
    assert batched[0].n_tokens == len(c_ids) and batched[0].logprob < 0
    # tiny token budget: one pair per batch, same numbers
    small = score_continuations(model, tokenizer, prompts, targets, max_tokens_per_batch=1)
    assert [s.logprob for s in small] == pytest.approx([s.logprob for s in batched], abs=1e-4)
    assert model.training  # training mode restored after scoring in eval mode
    with pytest.raises(ValueError):
        score_continuations(model, tokenizer, prompts, targets[:1])


def test_softmax_reward():
    scores = [ContinuationScore(-1.0, 2), ContinuationScore(-3.0, 2)]
    assert likelihood_reward(scores, 0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert likelihood_reward(scores, 1) == pytest.approx(1 - likelihood_reward(scores, 0))
    assert likelihood_reward(scores, 0, temperature=2.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert likelihood_reward([ContinuationScore(-2.0, 4)], 0) == pytest.approx(math.exp(-0.5))


def _annotation():
    task = get_task("annotation", TaskContext(labels=LABELS, genes=GENES), max_genes=8, n_hidden=2)
    known = {"masked": ["G1", None, "G3", None, "G5"]}
    unknown = {"hidden": ["G2", "G4"]}
    return task, known, unknown


def test_classification_queries_contrast_the_labels_and_read_no_label():
    task, known, unknown = _annotation()
    query = task.likelihood_queries("NK cell", known, unknown, seed=3)
    assert len(query.prompts) == len(LABELS) and query.index == LABELS.index("NK cell")
    assert all(label in prompt for label, prompt in zip(LABELS, query.prompts, strict=True))
    assert set(query.targets) == {direct_response("G2 G4")}
    assert all(p.endswith(DIRECT_INSTRUCTION) for p in query.prompts)  # scored in the answer-only form
    assert all("G2" not in p.split() and "G4" not in p.split() for p in query.prompts)  # x_u never shown


def test_reward_prefers_the_label_that_explains_the_hidden_genes():
    task, known, unknown = _annotation()

    def score(prompts, targets):  # a dual that finds G2 G4 likely only for T cells
        return [ContinuationScore(-1.0 if "T cell" in p else -6.0, 4) for p in prompts]

    reward = DualLikelihoodReward({"annotation": task}, score)
    completions = [format_response("", label) for label in LABELS] + ["no answer"]
    columns = {"task": ["annotation"] * 4, "known": [dumps(known)] * 4, "unknown": [dumps(unknown)] * 4,
               "seed": [3] * 4}
    rewards = reward([""] * 4, completions, **columns)
    assert rewards[2] > 0.9 and rewards[0] < 0.05 and rewards[1] < 0.05 and rewards[3] == 0.0
    assert sum(rewards[:3]) == pytest.approx(1.0)
    assert reward.last_stats["primal_malformed_rate"] == 0.25
    assert reward.last_stats["n_scored"] == len(LABELS)  # the 3 answers share one query set


def test_generative_queries_contrast_the_unknowns():
    task = get_task("generation", TaskContext(labels=LABELS, genes=GENES), max_genes=8)
    query = task.likelihood_queries(["G1", "G2"], {}, {"cell_type": "T cell"}, seed=0)
    assert len(set(query.prompts)) == 1 and query.targets[query.index] == direct_response("T cell")
    assert len(query.targets) == len(LABELS)


def test_a_bug_in_the_scorer_or_distance_raises_instead_of_rewarding_zero():
    task, known, unknown = _annotation()
    columns = {"task": ["annotation"], "known": [dumps(known)], "unknown": [dumps(unknown)], "seed": [0]}

    def broken(prompts, targets):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        DualLikelihoodReward({"annotation": task}, broken)([""], [format_response("", "B cell")], **columns)
    with pytest.raises(RuntimeError, match="score"):
        DualLikelihoodReward({"annotation": task})([""], [format_response("", "B cell")], **columns)

    class Broken(type(task)):
        def distance(self, truth, guess):
            raise KeyError("hidden")

    broken_task = Broken(task.context, **task.options)
    with pytest.raises(KeyError):
        broken_task.duality_score(unknown, format_response("", "G2 G4"))


def test_calibration_removes_a_label_bias_of_the_dual_without_reading_labels():
    """A dual that likes "B cell" for every cell: uncalibrated, B wins everywhere; calibrated, the truth wins."""
    task = get_task("annotation", TaskContext(labels=LABELS, genes=GENES), max_genes=8, n_hidden=2)
    cells = {  # hidden genes -> the label that really explains them
        ("G2", "G4"): "NK cell", ("G6", "G8"): "T cell", ("G10", "G12"): "B cell", ("G14", "G16"): "T cell"}

    def score(prompts, targets):
        out = []
        for prompt, target in zip(prompts, targets, strict=True):
            hidden = tuple(target.split()[1:3])
            bonus = 3.0 if f"a {cells[hidden]} cell" in prompt or f": {cells[hidden]}." in prompt else 0.0
            bias = 4.0 if "B cell" in prompt else 0.0  # the dual's label prior
            out.append(ContinuationScore(-10.0 + bonus + bias, 4))
        return out

    rows = []
    for hidden, truth in cells.items():
        known = {"masked": ["G1", None, "G3", None, "G5"]}
        for label in LABELS:
            rows.append((dumps(known), dumps({"hidden": list(hidden)}), label, label == truth))
    columns = {"task": ["annotation"] * len(rows), "known": [r[0] for r in rows], "unknown": [r[1] for r in rows],
               "seed": [0] * len(rows)}
    completions = [format_response("", r[2]) for r in rows]
    plain = DualLikelihoodReward({"annotation": task}, score)([""] * len(rows), completions, **columns)
    calibrated_reward = DualLikelihoodReward({"annotation": task}, score, calibrate=True)
    calibrated = calibrated_reward([""] * len(rows), completions, **columns)

    def wins(rewards):  # cells whose true label gets the highest reward
        per_cell = [rewards[i:i + len(LABELS)] for i in range(0, len(rows), len(LABELS))]
        truths = [[r[3] for r in rows[i:i + len(LABELS)]] for i in range(0, len(rows), len(LABELS))]
        return sum(t[max(range(len(LABELS)), key=r.__getitem__)] for r, t in zip(per_cell, truths, strict=True))

    assert wins(plain) == 1  # only the B cell
    assert wins(calibrated) == len(cells)
    prior = calibrated_reward.candidate_prior("annotation", list(LABELS))
    assert prior[0] == max(prior) and sum(prior) == pytest.approx(1.0)  # it learned the dual likes B
    with pytest.raises(ValueError):
        DualLikelihoodReward({"annotation": task}, score, prior_decay=1.0)
