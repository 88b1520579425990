"""The task protocol: parsers, perturbation grammar, the inpainting split, reward-hacking probes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellduality.errors import CellDualityError
from cellduality.rewards import DualityReward
from cellduality.tasks import TASKS, Example, TaskContext, dumps, format_response, get_task
from cellduality.tasks.perturbation import Perturbation, perturbation_from_value
from cellduality.tasks.text import parse_genes, parse_label

LABELS = ("CD19+ B", "CD14+ Monocyte", "CD56+ NK", "Dendritic")
VOCAB = frozenset(
    ["CD74", "HLA-DRA", "CD79A", "HLA-DRB1", "FTL", "CD37", "LTB", "HLA-DPB1", "CD52", "MS4A1", "CD14", "LYZ", "S100A8", "S100A9", "NKG7", "GNLY", "GZMB", "PRF1", "CST3", "FCER1A", "STAT1", "JAK2", "IRF1", "ISG15", "IFI6", "MX1"]
)
PERTURBATIONS = ("knockout of JAK2", "knockout of STAT1", "control (no perturbation)")
B_CELL = ["CD74", "HLA-DRA", "CD79A", "HLA-DRB1", "FTL", "CD37", "LTB", "HLA-DPB1", "CD52", "MS4A1", "CST3", "LYZ"]


def make(name: str, **options):
    context = TaskContext(labels=LABELS if name != "sensitivity" else ("resistant", "sensitive"),
                          genes=VOCAB, perturbations=PERTURBATIONS, drugs=("PLX4720",))
    return get_task(name, context, **options)


def example(name: str, seed: int = 7) -> Example:
    if name == "annotation":
        return Example("a", name, {"cell": B_CELL}, "CD19+ B", seed)
    if name == "sensitivity":
        return Example("s", name, {"cell": B_CELL, "drug": "PLX4720"}, "sensitive", seed)
    if name == "generation":
        return Example("g", name, {"cell_type": "CD19+ B"}, B_CELL, seed)
    control = ["CD74", "HLA-DRA", "FTL", "LTB", "CD52"]
    return Example("p", name, {"control": control, "perturbation": Perturbation("knockout", "STAT1").to_dict()},
                   ["CD74", "FTL", "HLA-DRA", "CD52"], seed)


def test_registry_has_the_four_tasks_and_a_one_line_error():
    assert {"annotation", "generation", "sensitivity", "perturbation"} <= set(TASKS)
    with pytest.raises(CellDualityError, match="Unknown task 'anotation'") as err:
        get_task("anotation")
    assert "\n" not in str(err.value)


# ---- parsers ---------------------------------------------------------------------------------


def test_label_parser_is_forgiving_about_form_strict_about_content():
    assert parse_label("<think>x</think>\n<ANSWER>  cd19+   b. </answer>", LABELS) == "CD19+ B"
    assert parse_label("<answer>Cell type: Dendritic</answer>", LABELS) == "Dendritic"
    assert parse_label("<answer>Plasma cell</answer>", LABELS) is None  # unknown label
    assert parse_label("<answer>CD19+ B or Dendritic</answer>", LABELS) is None  # hedging
    assert parse_label("<answer>CD19+ B</answer><answer>Dendritic</answer>", LABELS) is None
    assert parse_label("CD19+ B", LABELS) is None  # outside <answer>
    assert parse_label("<answer> </answer>", LABELS) is None


def test_gene_parser_keeps_known_genes_in_order_once():
    assert parse_genes("<answer>cd74, HLA-DRA\n1. CD74 banana MS4A1</answer>", VOCAB) == ["CD74", "HLA-DRA", "MS4A1"]
    assert parse_genes("<answer>banana split</answer>", VOCAB) is None  # no known gene
    assert parse_genes("CD74 MS4A1", VOCAB) is None  # outside <answer>


def test_perturbation_render_parse_round_trip_and_synonyms():
    for p in [Perturbation("knockout", "STAT1"), Perturbation("knockdown", "JAK2"),
              Perturbation("overexpression", "MYC"), Perturbation("drug", "PLX4720", "2 uM"),
              Perturbation("cytokine-stimulation", "IFN-beta"), Perturbation("control")]:
        assert Perturbation.parse(p.render()) == p
    assert Perturbation.parse("STAT1 KO") == Perturbation("knockout", "STAT1")
    assert Perturbation.parse("CRISPR knockout of stat1.") == Perturbation("knockout", "STAT1")
    assert Perturbation.parse("Stimulation with IFN-beta").key == Perturbation("cytokine-stimulation", "ifn-beta").key
    assert Perturbation.parse("treatment with PLX4720 at 2uM").key == Perturbation("drug", "PLX4720", "2 uM").key
    assert Perturbation.parse("non-targeting") == Perturbation("control")
    assert Perturbation.parse("something else entirely") is None


def test_perturbation_values_of_real_datasets():
    # Kang 2018: condition control/stimulated; Papalexi 2021: gene names, non-targeting, unassigned
    assert perturbation_from_value("stimulated").render() == "cytokine stimulation with IFN-beta"
    assert perturbation_from_value("control") == Perturbation("control")
    assert perturbation_from_value("IFNGR1").render() == "knockout of IFNGR1"
    assert perturbation_from_value("non-targeting") == Perturbation("control")
    assert perturbation_from_value("unassigned") is None
    assert perturbation_from_value("Ctrl-A", control_values=["Ctrl-A"]) == Perturbation("control")
    assert perturbation_from_value("TP53", kind="knockdown").render() == "knockdown of TP53"


def test_perturbation_dual_parser_is_strict_about_the_candidate_set():
    task = make("perturbation")
    assert task.parse_dual("<answer>STAT1 knockout</answer>") == {"perturbation": Perturbation("knockout", "STAT1").to_dict()}
    assert task.parse_dual("<answer>stat1</answer>")["perturbation"]["target"] == "STAT1"  # bare target, unique
    assert task.parse_dual("<answer>Control</answer>")["perturbation"]["kind"] == "control"
    assert task.parse_dual("<answer>knockout of IRF1</answer>") is None  # not a candidate
    assert task.parse_dual("<answer>knockdown of STAT1</answer>") is None  # wrong kind


arbitrary = st.one_of(
    st.text(max_size=300),
    st.builds(lambda a, b: f"<think>{a}</think> <answer>{b}</answer>", st.text(max_size=50), st.text(max_size=120)),
    st.builds(
        lambda words: f"<answer>{' '.join(words)}</answer>",
        st.lists(st.sampled_from([*sorted(VOCAB), *LABELS, *PERTURBATIONS, "of", "KO", "at", "1", "uM", "\t"]),
                 max_size=15),
    ),
)


@pytest.mark.parametrize("name", ["annotation", "generation", "sensitivity", "perturbation"])
@settings(max_examples=2000, deadline=None)
@given(text=arbitrary)
def test_parsers_and_scores_never_raise_on_arbitrary_text(name, text):
    task = make(name)
    ex = example(name)
    known, unknown = task.split(ex)
    primal = task.parse_primal(text)
    if primal is not None:
        assert isinstance(task.dual_prompt(primal, known, ex.seed), str)
    task.parse_dual(text)
    assert 0.0 <= task.duality_score(unknown, text) <= 1.0
    assert 0.0 <= task.ground_truth_score(ex.target, primal) <= 1.0


@pytest.mark.parametrize("name", ["annotation", "generation", "sensitivity", "perturbation"])
def test_reference_answers_round_trip(name):
    """The canonical y* parses back to itself, and the canonical x_u earns the full reward."""
    task = make(name)
    ex = example(name)
    known, unknown = task.split(ex)
    parsed = task.parse_primal(task.reference_response(ex, "because"))
    assert parsed == ex.target
    assert task.ground_truth_score(ex.target, parsed) == 1.0
    assert task.duality_score(unknown, format_response("", task.render_unknown(unknown))) == 1.0


# ---- the inpainting split ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 64), seed=st.integers(0, 2**31 - 1), m=st.integers(1, 16),
       hide=st.sampled_from(["interleaved", "random", "tail", "rare"]))
def test_dual_prompt_never_contains_a_hidden_gene(n, seed, m, hide):
    cell = [f"GENE{i}X" for i in range(n)]  # no gene is a substring of another
    frequency = {g: (seed + 7 * i) % 11 for i, g in enumerate(cell)}  # some genes unseen in training (0)
    task = get_task("annotation", TaskContext(labels=LABELS, gene_frequency=frequency), n_hidden=m, hide=hide,
                    max_genes=64)
    ex = Example("a", "annotation", {"cell": cell}, "CD19+ B", seed)
    known, unknown = task.split(ex)
    hidden = unknown["hidden"]
    assert 1 <= len(hidden) <= min(m, n // 2)
    assert hidden == [g for g in cell if g in set(hidden)]  # rank order kept
    prompt = task.dual_prompt("CD19+ B", known, seed)
    assert not any(g in prompt for g in hidden)
    assert sum(g is None for g in known["masked"]) == len(hidden)
    assert task.split(ex) == (known, unknown)  # deterministic given the seed
    if hide == "interleaved":
        positions = [cell.index(g) for g in hidden]
        assert all(b - a == 2 for a, b in zip(positions, positions[1:], strict=False))
        assert positions[-1] < 2 * len(hidden)
    if hide == "rare":  # no shown gene is rarer than a hidden one
        shown = [g for g in known["masked"] if g is not None]
        assert max(frequency[g] for g in hidden) <= min(frequency[g] for g in shown)


def test_rare_hiding_hides_the_least_frequent_genes_and_needs_frequencies():
    frequency = {"RPL13": 90, "B2M": 88, "CD79A": 3, "MS4A1": 5, "TMSB4X": 80, "CD74": 40}
    task = get_task("annotation", TaskContext(labels=LABELS, gene_frequency=frequency), n_hidden=2, hide="rare")
    cell = ["RPL13", "CD79A", "B2M", "MS4A1", "TMSB4X", "CD74", "NOVEL1"]
    known, unknown = task.split(Example("a", "annotation", {"cell": cell}, "CD19+ B", 0))
    assert unknown["hidden"] == ["CD79A", "NOVEL1"]  # a gene no training cell showed is the rarest
    assert task.split(Example("a", "annotation", {"cell": cell}, "CD19+ B", 99)) == (known, unknown)  # no seed
    round_trip = TaskContext.from_dict(task.context.to_dict())
    assert round_trip.gene_frequency == frequency
    assert "gene_frequency" not in TaskContext(labels=LABELS).to_dict()  # other strategies: file unchanged
    bare = get_task("annotation", TaskContext(labels=LABELS), hide="rare")
    with pytest.raises(CellDualityError, match="no gene frequencies"):
        bare.split(Example("a", "annotation", {"cell": cell}, "CD19+ B", 0))


def test_split_phase_and_paraphrase_vary_with_the_seed():
    task = make("annotation")
    splits = {tuple(task.split(example("annotation", seed))[1]["hidden"]) for seed in range(20)}
    prompts = {task.primal_prompt(example("annotation", seed)) for seed in range(20)}
    assert len(splits) == 2 and len(prompts) == len(task.primal_templates)


def test_sentences_are_truncated_in_prompts():
    task = make("generation", max_genes=3)
    prompt = task.dual_prompt(B_CELL, {}, 0)
    assert "CD79A" in prompt and "HLA-DRB1" not in prompt


# ---- reward-hacking probes -------------------------------------------------------------------


def _duality(task, ex, primal: str, dual: str) -> float:
    known, unknown = task.split(ex)
    reward = DualityReward({task.name: task}, lambda prompts: [dual] * len(prompts))
    return reward([task.primal_prompt(ex)], [primal], task=[task.name], known=[dumps(known)],
                  unknown=[dumps(unknown)], seed=[ex.seed])[0]


@pytest.mark.parametrize("name", ["annotation", "sensitivity"])
def test_inpainting_probes_earn_nothing_extra(name):
    task = make(name)
    ex = example(name)
    known, unknown = task.split(ex)
    label = ex.target
    honest_dual = format_response("", task.render_unknown(unknown))
    good = f"<answer>{label}</answer>"
    assert _duality(task, ex, good, honest_dual) == 1.0
    prompt = task.primal_prompt(ex)
    # primal hacks are malformed: echo, empty, outside <answer>, two answers
    for hack in [prompt, "", f"The answer is {label}", "<answer></answer>",
                 f"<answer>{label}</answer><answer>{task.context.labels[0]}</answer>"]:
        assert _duality(task, ex, hack, honest_dual) == 0.0
    # dual hacks score below an honest inpainting
    dual_prompt = task.dual_prompt(label, known, ex.seed)
    partial = format_response("", " ".join(unknown["hidden"][:2]))
    base = _duality(task, ex, good, partial)
    assert _duality(task, ex, good, format_response("", f"{label} {' '.join(unknown['hidden'][:2])}")) == base
    assert _duality(task, ex, good, dual_prompt) == 0.0  # echo: observed genes only
    assert _duality(task, ex, good, format_response("", " ".join([unknown["hidden"][0]] * 10))) < base
    assert _duality(task, ex, good, " ".join(unknown["hidden"])) == 0.0  # outside <answer>


@pytest.mark.parametrize("name", ["generation", "perturbation"])
def test_generative_probes_earn_nothing_extra(name):
    task = make(name)
    ex = example(name)
    known, unknown = task.split(ex)
    right = format_response("", task.render_unknown(unknown))
    cell = " ".join(ex.target)
    # writing the requested label / perturbation as "genes" gives the dual nothing: non-genes vanish
    leak = task.render_unknown(unknown)
    assert task.dual_prompt(task.parse_primal(f"<answer>{cell} {leak}</answer>"), known, ex.seed) == \
        task.dual_prompt(task.parse_primal(f"<answer>{cell}</answer>"), known, ex.seed)
    leak_only = task.parse_primal(f"<answer>{leak}</answer>")
    if leak_only is not None:  # "knockout of STAT1" -> [STAT1], which the dual never sees
        assert task.dual_prompt(leak_only, known, ex.seed) == task.dual_prompt([], known, ex.seed)
    for hack in ["", "<answer></answer>", cell, "<answer>CD19+ B</answer>"]:
        assert _duality(task, ex, hack, right) == 0.0, hack
    assert _duality(task, ex, f"<answer>{cell}</answer>", right) == 1.0
    # repeating one gene is one gene
    assert task.parse_primal("<answer>" + "CD74 " * 50 + "</answer>") == ["CD74"]
