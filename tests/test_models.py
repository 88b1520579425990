"""Presets, loading, saving and batched generation of models (tiny sizes, real gene texts)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cellduality.errors import ModelError
from cellduality.models import (
    PRESETS,
    PROMPT_SEPARATOR,
    apply_lora,
    build_model,
    build_tokenizer,
    count_parameters,
    format_prompt,
    load_model,
    make_generate_fn,
    read_model_info,
    save_cellduality_model,
)
from helpers import sft_rows


@pytest.fixture(scope="module")
def rows_and_genes(pbmc_small):
    return sft_rows(pbmc_small, 60)


@pytest.fixture(scope="module")
def tiny(rows_and_genes):
    rows, genes = rows_and_genes
    texts = [r["prompt"] + PROMPT_SEPARATOR + r["completion"] for r in rows]
    return load_model("tiny", tokenizer_texts=texts, genes=genes)


def test_presets_grow_and_small_is_about_25m(rows_and_genes):
    rows, genes = rows_and_genes
    # A vocabulary of the size a real dataset gives (~5k genes x 2 forms + BPE part).
    many = genes + [f"GENE{i}" for i in range(5000)]
    tok = build_tokenizer([r["prompt"] for r in rows], many, vocab_size=1000)
    sizes = {name: count_parameters(build_model(name, tok)) for name in ("tiny", "mini", "small")}
    assert sizes["tiny"] < sizes["mini"] < sizes["small"]
    assert 20e6 < sizes["small"] < 32e6
    assert list(PRESETS)[:3] == ["tiny", "mini", "small"]


def test_build_model_is_deterministic_in_seed(tiny):
    _, tok = tiny
    a, b, c = build_model("tiny", tok, seed=1), build_model("tiny", tok, seed=1), build_model("tiny", tok, seed=2)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_missing_or_unusable_model_paths_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as err:
        load_model(tmp_path / "nope")
    assert "\n" not in str(err.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "folder")
    (tmp_path / "folder" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(tmp_path / "folder")
    with pytest.raises(ModelError, match="tokenizer_texts"):
        load_model("tiny")


def test_saved_folder_is_a_standard_hf_model_with_lineage(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = tiny
    lineage = tmp_path / "sft"
    lineage.mkdir()
    (lineage / "tasks.json").write_text(json.dumps({"tasks": {"annotation": {}}}))
    (lineage / "inverse.json").write_text("{}")
    (lineage / "vocabulary.json").write_text('{"CD4": 3}')
    out = save_cellduality_model(model, tok, tmp_path / "model", {"stage": "sft", "base_model": "tiny"}, lineage)

    info = read_model_info(out)
    assert info["stage"] == "sft" and info["tasks"] == {"tasks": {"annotation": {}}} and info["created"]
    assert (out / "model.safetensors").is_file() and (out / "inverse.json").is_file()
    assert not list(out.glob(".saving-*"))
    again = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tok2 = AutoTokenizer.from_pretrained(out)
    ids = tok("CD4 CD8A HLA-DRA", return_tensors="pt")["input_ids"]
    assert tok2("CD4 CD8A HLA-DRA", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    loaded, _ = load_model(out)
    assert count_parameters(loaded) == count_parameters(model)


def test_read_model_info_explains_what_to_do(tmp_path):
    with pytest.raises(ModelError, match="not a CellDuality model.*cellduality sft"):
        read_model_info(tmp_path)


def test_generate_returns_completions_and_restores_mode(tiny, rows_and_genes):
    model, tok = tiny
    rows, _ = rows_and_genes
    model.train()
    generate = make_generate_fn(model, tok, max_new_tokens=6, batch_size=2)
    prompts = [r["prompt"] for r in rows[:3]]
    outs = generate(prompts)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    assert model.training and tok.padding_side == "right"
    # Left padding: a prompt generates the same continuation alone and inside a padded batch.
    alone = make_generate_fn(model, tok, max_new_tokens=6, batch_size=1)(prompts)
    assert alone == outs
    assert generate([]) == []


def test_sampling_with_a_seed_is_reproducible(tiny, rows_and_genes):
    model, tok = tiny
    prompts = [r["prompt"] for r in rows_and_genes[0][:2]]
    a = make_generate_fn(model, tok, max_new_tokens=8, do_sample=True, seed=3)(prompts)
    b = make_generate_fn(model, tok, max_new_tokens=8, do_sample=True, seed=3)(prompts)
    assert a == b


def test_format_prompt_uses_a_chat_template_without_double_bos(tiny):
    _, tok = tiny
    assert format_prompt(tok, "Q?") == "Q?" + PROMPT_SEPARATOR
    tok_chat = copy.deepcopy(tok)
    tok_chat.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    text = format_prompt(tok_chat, "Q?")
    assert text == "<|user|>Q?\n<|assistant|>"
    assert tok_chat(text)["input_ids"].count(tok_chat.bos_token_id) == 1


def test_lora_wraps_only_adapters_as_trainable(tiny):
    model, _ = tiny
    wrapped = apply_lora(copy.deepcopy(model), {"r": 4})
    assert 0 < count_parameters(wrapped, trainable_only=True) < count_parameters(wrapped) / 5
