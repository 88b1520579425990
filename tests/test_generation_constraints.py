"""Decoding constraint: inside <answer>, a gene already written cannot be written again."""

from __future__ import annotations

import torch

from cellduality.models import build_tokenizer
from cellduality.models.generation import UniqueAnswerGenes

GENES = ["CD74", "CD4", "HLA-DRA", "LYZ"]
TEXTS = ["<think> CD74 and CD4 are high; CD74 again. </think> <answer> CD74 HLA-DRA LYZ </answer>"] * 4


def _run(processor, tokenizer, text):
    """Feed ``text`` token by token; return which gene tokens were blocked before each step."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = torch.tensor([[ids[0]]])
    vocab = len(tokenizer)
    processor.reset()
    processor(prompt, torch.zeros(1, vocab))  # first step: nothing generated yet
    blocked = []
    for n in range(1, len(ids)):
        scores = processor(torch.tensor([ids[: n + 1]]), torch.zeros(1, vocab))
        blocked.append({g for g in GENES if any(torch.isinf(scores[0, t]) for t in processor.ids_of.get(g, []))})
    return tokenizer.convert_ids_to_tokens(ids), blocked


def test_repeats_blocked_only_inside_the_answer():
    tok = build_tokenizer(TEXTS, GENES)
    proc = UniqueAnswerGenes(tok, GENES)
    assert proc.active
    tokens, blocked = _run(proc, tok, "x <think> CD74 CD74 </think> <answer> CD74 HLA-DRA CD4")
    # in <think>, repeating CD74 is allowed
    assert blocked[tokens.index("ĠCD74")] == set()
    # after <answer> CD74: CD74 blocked (both spellings), CD4 (a prefix of nothing here) still free
    after_first = len(tokens) - 4
    assert "CD74" in blocked[after_first] and "CD4" not in blocked[after_first]
    assert blocked[-1] == {"CD74", "HLA-DRA", "CD4"}


def test_closing_the_answer_lifts_the_block():
    tok = build_tokenizer(TEXTS, GENES)
    proc = UniqueAnswerGenes(tok, GENES)
    _, blocked = _run(proc, tok, "x <answer> LYZ </answer> LYZ")
    assert blocked[-2] == set() and blocked[-1] == set()


def test_no_genes_means_inactive():
    tok = build_tokenizer(TEXTS, GENES)
    assert not UniqueAnswerGenes(tok, []).active
