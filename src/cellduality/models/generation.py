"""Batched generation as a plain ``Callable[[list[str]], list[str]]``.

The duality reward (inside GRPO), evaluation and inference all need "prompts in, completion texts
out". :func:`make_generate_fn` wraps a Hugging Face model that way: prompts are formatted with
:func:`~cellduality.models.loading.format_prompt` (the same convention as training), left-padded,
generated with the KV cache in batches, and only the new text is returned. The model is switched
to ``eval()`` under ``torch.no_grad()`` and put back in its previous mode, so calling it from
inside a training step (GRPO rewards) does not disturb training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cellduality.models.copy_ranks import CellOf, CopyRanks
from cellduality.models.loading import format_prompt
from cellduality.models.tokenizer import single_token_ids

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class UniqueAnswerGenes:
    """A logits processor: inside ``<answer>…</answer>``, a gene already written cannot be written again.

    A cell sentence lists each gene once, but a small model decoding greedily falls into loops
    (``HLA-DQB1 HLA-DQB1 …``) and never closes its answer. Blocking repeats *only inside the
    answer* keeps the reasoning free to mention a gene the answer then lists. Genes that the
    tokenizer splits into several tokens are not tracked (the constraint degrades gracefully for
    general-purpose tokenizers). State is updated incrementally, one new token per step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, genes: Iterable[str]) -> None:
        self.gene_of: dict[int, str] = {}
        for gene in genes:
            self.gene_of.update(single_token_ids(tokenizer, gene))
        self.ids_of: dict[str, list[int]] = {}
        for token, gene in self.gene_of.items():
            self.ids_of.setdefault(gene, []).append(token)
        self.open_ids = set(single_token_ids(tokenizer, "<answer>"))
        self.close_ids = set(single_token_ids(tokenizer, "</answer>"))
        self._start: int | None = None
        self._state: list[tuple[bool, set[str]]] = []

    @property
    def active(self) -> bool:
        return bool(self.gene_of and self.open_ids)

    def reset(self) -> None:
        """Forget the previous batch (call before each ``model.generate``)."""
        self._start = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._start is None:  # first step of a batch: nothing generated yet
            self._start = input_ids.shape[1]
            self._state = [(False, set()) for _ in range(input_ids.shape[0])]
            return scores
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            inside, seen = self._state[row]
            if token in self.open_ids:
                inside, seen = True, set()
            elif token in self.close_ids:
                inside = False
            elif inside and token in self.gene_of:
                seen.add(self.gene_of[token])
            self._state[row] = (inside, seen)
            if inside and seen:
                blocked = [t for g in seen for t in self.ids_of[g]]
                scores[row, blocked] = float("-inf")
        return scores


class RequireReasoning:
    """A logits processor: right after ``<think>``, the think block cannot be closed or left blank.

    A guard for models taught answer-only rows with an empty ``<think>  </think>`` (teach before
    answer-only rows got their own prompt and lost the think block, ``tasks.base.direct_response``):
    they may answer directly when decoding greedily. Where reasoning is the point
    (``annotate --explain``), the first token after ``<think>`` must be neither ``</think>`` nor
    whitespace; everything after it is free. Inactive when ``<think>`` is not one token.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.open_ids = list(single_token_ids(tokenizer, "<think>"))
        blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
        self.banned = sorted(set(blank) | set(single_token_ids(tokenizer, "</think>")))

    @property
    def active(self) -> bool:
        return bool(self.open_ids and self.banned)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        after_open = torch.isin(input_ids[:, -1], torch.tensor(self.open_ids, device=input_ids.device))
        if after_open.any():
            rows = after_open.nonzero().squeeze(-1)
            scores[rows.unsqueeze(-1), torch.tensor(self.banned, device=scores.device)] = float("-inf")
        return scores


def make_generate_fn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int | None = None,
    genes: Iterable[str] | None = None,
    require_reasoning: bool = False,
    cell_of: CellOf | None = None,
    labels: Iterable[str] = (),
) -> Callable[[list[str]], list[str]]:
    """Return ``generate(prompts) -> completions`` for raw task prompts.

    With ``seed`` set, call ``i`` samples with seed ``seed + i`` inside a forked RNG: runs are
    reproducible and the caller's random state is untouched. With ``genes`` (the tasks' gene
    vocabulary), a gene cannot repeat inside an ``<answer>`` (:class:`UniqueAnswerGenes`). With
    ``require_reasoning``, the ``<think>`` block cannot be left empty (:class:`RequireReasoning`).
    With ``cell_of`` (raw prompt -> its input cell), a rank the reasoning states for a gene of the
    input cell is copied from that cell, and for tasks that cite only the input's genes, other
    genes (not ``labels``' tokens) are barred from the reasoning
    (:class:`~cellduality.models.copy_ranks.CopyRanks`; needs ``genes``); the returned function's
    ``copy_ranks`` attribute is that processor (or ``None``).
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    unique = UniqueAnswerGenes(tokenizer, genes) if genes is not None else None
    processors = LogitsProcessorList([unique] if unique is not None and unique.active else [])
    if require_reasoning and (think := RequireReasoning(tokenizer)).active:
        processors.append(think)
    copy = CopyRanks(tokenizer, genes or (), labels) if cell_of is not None else None
    if copy is not None and copy.active:
        processors.append(copy)

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True, **sampling)
    calls = 0

    def generate(prompts: list[str]) -> list[str]:
        nonlocal calls
        if not prompts:
            return []
        texts = [format_prompt(tokenizer, p) for p in prompts]
        device = next(model.parameters()).device
        was_training = model.training
        side = tokenizer.padding_side
        outputs: list[str] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed + calls)
            calls += 1
            try:
                model.eval()
                tokenizer.padding_side = "left"
                with torch.no_grad():
                    for start in range(0, len(texts), batch_size):
                        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
                        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                        if unique is not None:
                            unique.reset()
                        if copy is not None:
                            copy.reset([cell_of(p) for p in prompts[start : start + batch_size]])
                        out = model.generate(**batch, generation_config=config, logits_processor=processors)
                        new = out[:, batch["input_ids"].shape[1] :]
                        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            finally:
                tokenizer.padding_side = side
                model.train(was_training)
        return outputs

    generate.copy_ranks = copy  # type: ignore[attr-defined]
    return generate
