"""RWJS properties and the TRL reward callables (duality and ground-truth oracle)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.rewards import DualityReward, GroundTruthReward, completion_text, rwjs
from cellduality.tasks import Example, TaskContext, dumps, format_response, get_task

GENES = [f"G{i}" for i in range(40)]
gene_lists = st.lists(st.sampled_from(GENES), max_size=25)
unique_lists = st.lists(st.sampled_from(GENES), min_size=1, max_size=25, unique=True)


# ---- RWJS ------------------------------------------------------------------------------------


def test_worked_example_from_docstring():
    # weights 1, 1/log2(3), 1/2 -> (2 * 0.6309) / (1 + 1 + 0.5 + 0.5)
    assert rwjs(["CD3D", "CD3E", "IL7R"], ["CD3E", "CD3D", "NKG7"]) == pytest.approx(2 / math.log2(3) / 3)


def test_strings_and_vocabulary_filter():
    assert rwjs("A B C", "A B C") == 1.0
    # unknown symbols are dropped before ranking, so padding cannot shift real genes
    assert rwjs("A B C", "JUNK A B C", vocabulary={"A", "B", "C"}) == 1.0
    assert rwjs("A B C", "JUNK A B C") < 1.0
    assert rwjs([], ["A"]) == 0.0 and rwjs(["A"], None) == 0.0


@settings(max_examples=400, deadline=None)
@given(unique_lists)
def test_identity_is_one(genes):
    assert rwjs(genes, genes) == pytest.approx(1.0)


@settings(max_examples=300, deadline=None)
@given(unique_lists, unique_lists)
def test_disjoint_is_zero_and_symmetric_and_bounded(a, b):
    b_disjoint = [g for g in b if g not in a]
    if b_disjoint:
        assert rwjs(a, b_disjoint) == 0.0
    assert rwjs(a, b) == pytest.approx(rwjs(b, a))
    assert 0.0 <= rwjs(a, b) <= 1.0


@settings(max_examples=300, deadline=None)
@given(gene_lists, gene_lists)
def test_duplicates_only_first_occurrence_counts(a, b):
    first = list(dict.fromkeys(b))
    assert rwjs(a, b) == pytest.approx(rwjs(a, first))
    assert 0.0 <= rwjs(a, b) <= 1.0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(GENES), min_size=3, max_size=30, unique=True), st.data())
def test_monotone_when_a_gene_moves_further_from_its_rank(genes, data):
    i = data.draw(st.integers(0, len(genes) - 1))
    scores = []
    for j in range(i, len(genes)):  # move gene i down to position j, further each time
        moved = genes[:i] + genes[i + 1 :]
        moved.insert(j, genes[i])
        scores.append(rwjs(genes, moved))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(scores, scores[1:], strict=False))
    scores = []
    for j in range(i, -1, -1):  # and up
        moved = genes[:i] + genes[i + 1 :]
        moved.insert(j, genes[i])
        scores.append(rwjs(genes, moved))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(scores, scores[1:], strict=False))


def test_displacement_costs_more_near_the_top():
    genes = [f"G{i}" for i in range(20)]
    top_swap = ["G1", "G0", *genes[2:]]
    tail_swap = [*genes[:18], "G19", "G18"]
    assert rwjs(genes, top_swap) < rwjs(genes, tail_swap) < 1.0


# ---- reward callables ------------------------------------------------------------------------

LABELS = ("B cell", "T cell", "NK cell")
VOCAB = frozenset({"CD79A", "MS4A1", "CD3E", "CD3D", "NKG7", "GNLY", "IL7R", "LTB", "CD74", "HLA-DRA"})


@pytest.fixture
def annotation():
    return get_task("annotation", TaskContext(labels=LABELS, genes=VOCAB))


@pytest.fixture
def generation():
    return get_task("generation", TaskContext(labels=LABELS, genes=VOCAB))


def _rl_columns(task, example):
    known, unknown = task.split(example)
    return {"task": [task.name], "known": [dumps(known)], "unknown": [dumps(unknown)], "seed": [example.seed]}


def _b_cell(seed=3):
    cell = ["CD79A", "CD74", "MS4A1", "HLA-DRA", "LTB", "IL7R"]
    return Example(id="x", task="annotation", input={"cell": cell}, target="B cell", seed=seed)


class Recorder:
    """A test double for the policy: answers dual prompts with fixed text, records calls."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [self.reply(p) if callable(self.reply) else self.reply for p in prompts]


def test_duality_reward_batches_one_generate_call_and_skips_malformed(annotation):
    ex = _b_cell()
    _, unknown = annotation.split(ex)
    perfect = format_response("", " ".join(unknown["hidden"]))
    gen = Recorder(perfect)
    reward = DualityReward({"annotation": annotation})
    reward.generate = gen  # attached after construction, as the GRPO trainer does
    cols = _rl_columns(annotation, ex)
    completions = ["<answer>B cell</answer>", "no answer", "<answer>T cell</answer>", "<answer>Plasma</answer>"]
    metrics = {}
    out = reward(["p"] * 4, completions, **{k: v * 4 for k, v in cols.items()},
                 log_metric=lambda k, v: metrics.setdefault(k, v), trainer_state=None)
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert len(gen.calls) == 1 and len(gen.calls[0]) == 2  # one batch, only well-formed primals
    assert "B cell" in gen.calls[0][0] and "T cell" in gen.calls[0][1]
    assert reward.last_stats["primal_malformed_rate"] == 0.5
    assert reward.last_stats["annotation/mean"] == 0.5
    assert metrics["duality/dual_parse_failure_rate"] == 0.0
    assert reward.__name__ == "duality"


def test_duality_reward_conversational_completions(generation):
    ex = Example(id="g", task="generation", input={"cell_type": "B cell"}, target=["CD79A"], seed=1)
    cols = _rl_columns(generation, ex)
    completion = [{"role": "assistant", "content": "<think>B</think><answer>CD79A MS4A1 CD74</answer>"}]
    reward = DualityReward({"generation": generation}, Recorder("<answer>b cell</answer>"))
    assert reward([[{"role": "user", "content": "p"}]], [completion], **cols) == [1.0]
    reward.generate = Recorder("<answer>NK cell</answer>")
    assert reward(["p"], [completion], **cols) == [0.0]
    assert completion_text(object()) == "" and completion_text({"content": "x"}) == "x"


def test_duality_reward_without_generate_is_a_programming_error(annotation):
    reward = DualityReward({"annotation": annotation})
    with pytest.raises(RuntimeError):
        reward(["p"], ["<answer>B cell</answer>"], **_rl_columns(annotation, _b_cell()))
    # ... but a batch where every primal is malformed never needs the policy
    assert reward(["p"], ["garbage"], **_rl_columns(annotation, _b_cell())) == [0.0]


def test_ground_truth_reward(annotation, generation):
    reward = GroundTruthReward({"annotation": annotation, "generation": generation})
    out = reward(
        ["p"] * 4,
        ["<answer>B CELL</answer>", "<answer>T cell</answer>", "<answer>CD79A MS4A1</answer>", "x"],
        task=["annotation", "annotation", "generation", "generation"],
        target=[dumps("B cell"), dumps("B cell"), dumps(["CD79A", "MS4A1"]), dumps(["CD79A"])],
    )
    assert out == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        reward(["p"], ["<answer>B cell</answer>"], task=["annotation"])


texts = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b: f"<think>{a}</think><answer>{b}</answer>", st.text(max_size=40), st.text(max_size=80)),
    st.builds(lambda b: f"<answer>{b}</answer>",
              st.lists(st.sampled_from([*sorted(VOCAB), *LABELS, "x", "<answer>", "\n"]), max_size=12).map(" ".join)),
)


@settings(max_examples=1500, deadline=None)
@given(texts, texts)
def test_rewards_never_raise_and_stay_in_unit_interval(primal, dual, ):
    annotation = get_task("annotation", TaskContext(labels=LABELS, genes=VOCAB))
    generation = get_task("generation", TaskContext(labels=LABELS, genes=VOCAB))
    tasks = {"annotation": annotation, "generation": generation}
    ex_a = _b_cell()
    ex_g = Example(id="g", task="generation", input={"cell_type": "T cell"}, target=["CD3E"], seed=2)
    cols = {k: _rl_columns(annotation, ex_a)[k] + _rl_columns(generation, ex_g)[k]
            for k in ("task", "known", "unknown", "seed")}
    duality = DualityReward(tasks, Recorder(dual))(["p", "p"], [primal, primal], **cols)
    oracle = GroundTruthReward(tasks)(["p", "p"], [primal, primal], **cols,
                                      target=[dumps("B cell"), dumps(["CD3E"])])
    assert all(0.0 <= r <= 1.0 for r in duality + oracle)
