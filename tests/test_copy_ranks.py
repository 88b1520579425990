"""Copy-aware decoding: a stated rank is copied from the input cell; absent genes cannot be cited."""

from __future__ import annotations

import pytest
import torch

from cellduality.faithfulness import copy_aware_decoding, prompt_cell_reader


@pytest.fixture(scope="module")
def setup(pbmc_task):
    from cellduality.models import load_model
    from cellduality.tasks.base import format_response

    cells, task = pbmc_task
    example = task.make_examples(cells, range(1), seed=0)[0]
    prompt = task.primal_prompt(example)
    texts = [prompt, format_response("Key evidence: CD3E (rank 4; among CD4 training cells 90%, among others 7%) "
                                     "and IL32 at rank 2 (in CD4 cells 80%, elsewhere 12%).", "x")]
    _, tokenizer = load_model("tiny", tokenizer_texts=texts, genes=sorted(task.context.genes))
    return task, prompt, tokenizer


def _step(processor, tokenizer, prompt: str, generated: str):
    """Scores the processor leaves for the token after ``generated``, fed one token per step as in
    ``model.generate`` (flat scores going in)."""
    return _decode(processor, tokenizer, prompt, generated, 0)[0]


def _decode(processor, tokenizer, prompt: str, generated: str, n: int):
    """Feed ``generated`` token by token, then decode ``n`` more greedily from flat scores (only
    forced tokens can win); returns (the last scores, the decoded extra token ids)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    scores = processor(torch.tensor([ids]), torch.zeros(1, len(tokenizer)))[0]
    for token in tokenizer.encode(generated, add_special_tokens=False):
        ids.append(token)
        scores = processor(torch.tensor([ids]), torch.zeros(1, len(tokenizer)))[0]
    written = []
    for _ in range(n):
        if torch.isfinite(scores).all():
            break
        ids.append(int(scores.argmax()))
        written.append(ids[-1])
        scores = processor(torch.tensor([ids]), torch.zeros(1, len(tokenizer)))[0]
    return scores, written


def test_the_rank_of_a_cited_gene_is_copied_from_the_input_cell(setup):
    from cellduality.models.copy_ranks import CopyRanks

    task, prompt, tokenizer = setup
    cell = prompt_cell_reader({"annotation": task})(prompt)
    assert cell is not None and cell.cite_only_these and len(cell.genes) == 24
    gene = cell.genes[6]
    for cue in (f"<think> Key evidence: {gene} (rank", f"<think> {gene} at rank", f"<think> {gene} at rank 7 (rank"):
        processor = CopyRanks(tokenizer)
        processor.reset([cell])
        scores = _step(processor, tokenizer, prompt, cue)
        forced = tokenizer.encode(" 7", add_special_tokens=False)
        assert torch.isfinite(scores).sum() == 1 and int(scores.argmax()) == forced[0], cue
        assert processor.forced == cue.count("rank")  # "at rank 7 (rank": both copied
    # not a gene of the cell, inside the answer, or a row without a cell: left alone
    for cue, cells in (("<think> MADEUP1 (rank", [cell]), (f"<think> x </think> <answer> {gene} (rank", [cell]),
                       (f"<think> {gene} (rank", [None])):
        processor = CopyRanks(tokenizer)
        processor.reset(cells)
        assert torch.isfinite(_step(processor, tokenizer, prompt, cue)).all(), cue


def test_only_genes_of_the_input_cell_and_label_words_can_be_cited(setup):
    task, prompt, tokenizer = setup
    from cellduality.models.copy_ranks import CopyRanks

    kwargs = copy_aware_decoding({"annotation": task})
    processor = CopyRanks(tokenizer, kwargs["genes"], kwargs["labels"])
    cell = kwargs["cell_of"](prompt)
    processor.reset([cell])
    scores = _step(processor, tokenizer, prompt, "<think> Key evidence:")
    allowed = {g for g in task.context.genes if torch.isfinite(scores[tokenizer.encode(f" {g}", add_special_tokens=False)]).all()}
    label_genes = {g for g in task.context.genes if any(g in label.split("+")[0].split("/") for label in task.context.labels)}
    in_cell = set(cell.genes)
    assert in_cell <= allowed  # every gene of the cell stays available
    assert allowed - in_cell <= label_genes  # others only where a label spells them (CD14 in "CD14+ Monocyte")
    assert len(allowed) < len(task.context.genes) / 2
    after = _step(processor, tokenizer, prompt, "<think> ok </think> <answer>")
    assert torch.isfinite(after).all()  # the answer is never constrained


def test_generate_fn_wires_copy_aware_decoding(setup, tiny_model):
    from cellduality.models import make_generate_fn

    task, prompt, _ = setup
    model, _ = tiny_model
    generate = make_generate_fn(model.model, model.tokenizer, max_new_tokens=4, **copy_aware_decoding({"annotation": task}))
    assert generate.copy_ranks is not None and len(generate([prompt, "no cell here"])) == 2
    assert make_generate_fn(model.model, model.tokenizer, max_new_tokens=4).copy_ranks is None


def test_inference_decodes_copy_aware_by_default_and_can_show_the_model_s_own_text(tiny_model, pbmc_small):
    import cellduality as cd

    mdl, _ = tiny_model
    assert mdl.copy_aware and mdl.generator(max_new_tokens=2).copy_ranks is not None
    assert mdl.generator(max_new_tokens=2, copy_aware=False).copy_ranks is None
    try:
        cd.tl.annotate(pbmc_small[:8].copy(), mdl, copy=True, direct=True, copy_aware=False)
        assert mdl.copy_aware is False and mdl.generator(max_new_tokens=2).copy_ranks is None
    finally:
        mdl.copy_aware = True


def test_the_answer_copies_the_label_the_reasoning_concluded_with(setup):
    from cellduality.models.copy_ranks import CopyRanks

    task, prompt, tokenizer = setup
    cell = prompt_cell_reader({"annotation": task})(prompt)
    assert list(cell.labels) == list(task.context.labels)
    concluded, other = cell.labels[1], cell.labels[0]
    processor = CopyRanks(tokenizer)
    processor.reset([cell])
    reasoning = f"<think> {other} is possible, but together these point to {concluded}. </think> <answer>"
    _, written = _decode(processor, tokenizer, prompt, reasoning, 12)
    assert tokenizer.decode(written).split() == f"{concluded} </answer>".split()
    assert processor.answers_copied == 1
    # no conclusion in the reasoning: the answer stays the model's
    processor.reset([cell])
    assert torch.isfinite(_step(processor, tokenizer, prompt, "<think> hmm </think> <answer>")).all()


def test_training_frequencies_are_copied_for_the_label_the_model_cites(setup):
    from dataclasses import replace

    from cellduality.models.copy_ranks import CopyRanks

    task, prompt, tokenizer = setup
    cell = prompt_cell_reader({"annotation": task})(prompt)
    assert cell.frequency is None  # no teacher knowledge given: numbers stay the model's
    table = {(cell.genes[0], cell.labels[2]): (0.96, 0.07)}
    cell = replace(cell, frequency=lambda gene, label: table.get((gene, label), (0.5, 0.5)))
    gene, label = cell.genes[0], cell.labels[2]
    for cue, expected in ((f"<think> {gene} (rank 1; among {label} training cells", " 96"),
                          (f"<think> {gene} at rank 1 (in {label} cells 12%, elsewhere", " 7"),
                          (f"<think> {gene} (rank 1; among {label} training cells 50%, among others", " 7")):
        processor = CopyRanks(tokenizer)
        processor.reset([cell])
        _, written = _decode(processor, tokenizer, prompt, cue, 4)
        assert tokenizer.decode(written).replace(" ", "") == expected.strip(), cue
        assert processor.frequencies_copied == 1 + ("%" in cue)  # each cue fed token by token is copied
