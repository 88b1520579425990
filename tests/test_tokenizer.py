"""The gene-aware tokenizer: exact round-trip, one token per gene, tags survive special-token skipping."""

from __future__ import annotations

import pytest

from cellduality.models import PROMPT_SEPARATOR, TAGS, build_tokenizer, format_prompt
from helpers import sft_rows


@pytest.fixture(scope="module")
def corpus(pbmc_small):
    rows, genes = sft_rows(pbmc_small, 80)
    texts = [r["prompt"] + PROMPT_SEPARATOR + r["completion"] for r in rows]
    return texts, genes


@pytest.fixture(scope="module")
def tokenizer(corpus):
    texts, genes = corpus
    return build_tokenizer(texts, genes, vocab_size=1200)


TRICKY = [
    "genes:\nCD4 CD44 HLA-DRA RP11-782C8.1\n\n\tEPB41L4A-AS1.  double  space ",
    "An unseen gene ZZTOP9-AS2 and a typo HLA-DRAX, then CD4-positive / CD8+ cells (50.5%).",
    "Unicode: β-catenin, naïve T cells, → arrows, 細胞 ‘quotes’ \u00a0nbsp",
    "<think>no spaces</think><answer>CD14+ Monocyte</answer>",
    "  leading and trailing whitespace \n",
    "",
]


def test_round_trips_every_text_exactly(tokenizer, corpus):
    texts, _ = corpus
    for text in texts + TRICKY:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        with_specials = tokenizer(text)["input_ids"]
        assert with_specials[0] == tokenizer.bos_token_id
        assert tokenizer.decode(with_specials, skip_special_tokens=True) == text


def test_no_unknown_tokens(tokenizer):
    assert tokenizer.unk_token is None
    for text in TRICKY:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert all(0 <= i < len(tokenizer) for i in ids)


def test_every_gene_is_one_token_in_context(tokenizer, corpus):
    _, genes = corpus
    for gene in genes:
        assert len(tokenizer(" " + gene, add_special_tokens=False)["input_ids"]) == 1, gene
        assert len(tokenizer(gene, add_special_tokens=False)["input_ids"]) == 1, gene
    sentence = " ".join(genes[:50])
    assert len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) == 50


def test_gene_is_never_matched_inside_a_longer_symbol():
    tok = build_tokenizer(["CD44 is a marker. CD4 too."] * 3, ["CD4"], vocab_size=300)
    cd4 = tok.convert_tokens_to_ids("ĠCD4")
    ids = tok(" CD44 CD4-AS1 CD4.", add_special_tokens=False)["input_ids"]
    assert ids.count(cd4) == 1  # only the last, standalone CD4 (followed by a full stop)
    assert tok.decode(ids) == " CD44 CD4-AS1 CD4."


def test_tags_are_ordinary_tokens_that_survive_skip_special_tokens(tokenizer):
    assert not set(TAGS) & set(tokenizer.all_special_tokens)
    for tag in TAGS:
        assert len(tokenizer(" " + tag, add_special_tokens=False)["input_ids"]) == 1
    text = "<think> CD14 is high </think> <answer> CD14+ Monocyte </answer>"
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_eos_text_becomes_the_eos_token(tokenizer):
    """TRL appends ``eos_token`` as text to completions; it must become the single EOS id."""
    ids = tokenizer("<answer> x </answer>" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id


def test_prompt_is_a_token_prefix_of_prompt_plus_completion(tokenizer, corpus, pbmc_small):
    """TRL finds the completion where the two tokenisations diverge: they must not merge."""
    rows, _ = sft_rows(pbmc_small, 10)
    for row in rows:
        prompt = format_prompt(tokenizer, row["prompt"])
        p_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + row["completion"])["input_ids"]
        assert full[: len(p_ids)] == p_ids


def test_save_and_reload_keeps_the_encoding(tokenizer, corpus, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for text in corpus[0][:20] + TRICKY:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text


def test_symbols_that_cannot_be_one_piece_warn_but_still_round_trip():
    with pytest.warns(UserWarning, match="split them"):
        tok = build_tokenizer(["a b c"] * 3, ["CD4", "WEIRD(1)"], vocab_size=300)
    assert tok.decode(tok("WEIRD(1) CD4", add_special_tokens=False)["input_ids"]) == "WEIRD(1) CD4"
