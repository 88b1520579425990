"""A gene-aware tokenizer trained on our own corpus (byte-level BPE + one token per gene).

Why not a plain word-level tokenizer: it has unknown tokens (a user's unseen gene, a typo) and
cannot round-trip whitespace. Why not a plain BPE: it splits ``HLA-DRA`` or ``CD44`` into pieces,
so cell sentences get long and genes lose their identity. This tokenizer is both:

* **Pre-tokenizer** (one regex): a piece is an optional single leading space plus either a
  reasoning tag (``<think>`` …), a gene-like word (alphanumerics with inner ``- . _``, so
  ``HLA-DRA`` and ``RP11-34P13.7`` stay whole and ``CD44`` is never ``CD4`` + ``4``), a run of
  other symbols, or a run of whitespace. Every character lands in exactly one piece, so
  ``decode(encode(t)) == t`` for every text.
* **Model**: byte-level BPE trained on the corpus (all 256 bytes are in the alphabet, so nothing
  is ever unknown) with ``ignore_merges=True``: a piece found whole in the vocabulary is one
  token. Every gene symbol (with and without its leading space) and every reasoning tag is
  put in the vocabulary, hence exactly one token, whatever merges BPE learnt.
* Tags are *vocabulary entries*, not added/special tokens: TRL decodes completions with
  ``skip_special_tokens=True`` and they must survive it. Only ``<pad>``, ``<s>``, ``</s>`` are
  special; ``<s>`` is prepended by the post-processor.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
"""Reasoning tags of the answer format (``cellduality.tasks.base.format_response``): ordinary tokens."""

PIECE_PATTERN = (
    r" ?</?(?:think|answer)>"
    r"| ?[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9])?"
    r"| ?[^\sA-Za-z0-9]+"
    r"|\s+"
)
"""How text is cut into pieces before BPE (see the module docstring)."""

DEFAULT_BPE_VOCAB = 4096
"""Size of the learnt (non-gene) part of the vocabulary: prompt words, numbers, sub-gene pieces."""


@lru_cache(maxsize=1)
def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable-character map used by the ``ByteLevel`` pre-tokenizer/decoder."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def byte_level(text: str) -> str:
    """``text`` as the byte-level alphabet spells it (how its vocabulary entry is written)."""
    table = _byte_to_char()
    return "".join(table[b] for b in text.encode("utf-8"))


def _base_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def build_tokenizer(
    texts: Iterable[str],
    genes: Iterable[str],
    *,
    vocab_size: int = DEFAULT_BPE_VOCAB,
    min_frequency: int = 2,
    model_max_length: int = 4096,
) -> PreTrainedTokenizerFast:
    """Train the gene-aware tokenizer on ``texts`` and give every symbol in ``genes`` one token.

    ``vocab_size`` bounds the learnt BPE part only; the final vocabulary is that plus two entries
    per gene (``"CD4"`` and ``" CD4"``) and the tags. A symbol the pre-tokenizer would cut
    (characters other than letters, digits and inner ``- . _``; none of GENCODE v44's 61,267
    names) cannot be one token: it is left to BPE (still exact, just several tokens) with a warning.
    """
    import json
    import warnings

    from tokenizers import Regex, Tokenizer, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    gene_list = sorted({g.strip() for g in genes if g and g.strip()})
    splitter = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    bad = [g for g in gene_list if len(splitter.pre_tokenize_str(" " + g)) != 1]
    if bad:
        warnings.warn(
            f"{len(bad)} gene symbols contain characters that split them into several tokens, e.g. {bad[:3]}",
            stacklevel=2,
        )
        gene_list = [g for g in gene_list if g not in set(bad)]

    tok = _base_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    # Rebuild the BPE model with every gene and tag as a whole-piece vocabulary entry, and drop
    # the merges that would build a gene token out of a longer piece (CD4 inside CD44 or CD4-AS1):
    # a gene token then only ever stands for the whole symbol.
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    whole = {byte_level(form) for word in (*TAGS, *gene_list) for form in (word, " " + word)}
    for entry in sorted(whole):
        if entry not in vocab:
            vocab[entry] = len(vocab)
    merges = [m.split(" ") if isinstance(m, str) else m for m in state["model"]["merges"]]
    state["model"]["merges"] = [m for m in merges if m[0] + m[1] not in whole]
    state["model"]["vocab"] = vocab
    state["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(state))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def single_token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> dict[int, str]:
    """Ids of the one-token spellings of ``text`` (bare and space-prefixed), mapped to ``text``.

    Logits processors act on these ids; a text the tokenizer splits has none (they degrade to a no-op).
    """
    out = {}
    for variant in (text, f" {text}"):
        ids = tokenizer.encode(variant, add_special_tokens=False)
        if len(ids) == 1:
            out[ids[0]] = text
    return out
