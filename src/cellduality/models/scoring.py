"""Teacher-forced scoring: ``log p(continuation | prompt)`` for many pairs in one forward pass.

The likelihood duality rewards (:mod:`cellduality.rewards`) and fast annotation ask the model how
probable a *given* answer is, not what it would write. That costs one forward pass over
``prompt + continuation`` instead of a token-by-token ``generate``: pairs are length-sorted into
padded batches (little padding), the model runs once per batch in ``eval()`` under
``torch.no_grad()``, and only the continuation's tokens are summed. The prompt is formatted with
:func:`~cellduality.models.loading.format_prompt`, exactly as training and generation see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cellduality.models.loading import format_prompt

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ScoreFn = Callable[[Sequence[str], Sequence[str]], list["ContinuationScore"]]


@dataclass(frozen=True)
class ContinuationScore:
    """Summed log-probability of a continuation's tokens and how many tokens it has."""

    logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else 0.0


def _encode_pairs(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                  continuations: Sequence[str]) -> list[tuple[list[int], int]]:
    """Token ids of ``format_prompt(prompt) + continuation`` and where the continuation starts.

    Prompt and continuation are tokenised separately and concatenated, so the boundary is exact
    (the same split TRL's completion masks use); special tokens are added to the prompt only.
    """
    texts = [format_prompt(tokenizer, p) for p in prompts]
    prompt_ids = tokenizer(text=list(texts))["input_ids"]
    cont_ids = tokenizer(text=list(continuations), add_special_tokens=False)["input_ids"]
    return [(list(p) + list(c), len(p)) for p, c in zip(prompt_ids, cont_ids, strict=True)]


def length_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> Iterator[list[int]]:
    """Row indices in increasing length, grouped so a batch padded to its longest row holds at
    most ``max_tokens_per_batch`` tokens (a row longer than that is a batch of its own)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    start = 0
    while start < len(order):
        stop = start + 1
        # lengths grow along ``order``: extend while the padded batch stays in budget
        while stop < len(order) and lengths[order[stop]] * (stop - start + 1) <= max_tokens_per_batch:
            stop += 1
        yield order[start:stop]
        start = stop


def score_continuations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    max_tokens_per_batch: int = 16384,
) -> list[ContinuationScore]:
    """``log p(continuation_i | prompt_i)`` under ``model`` for every pair, in input order.

    Batches are built from length-sorted pairs so that each holds at most
    ``max_tokens_per_batch`` padded tokens. An empty continuation scores 0 with 0 tokens.
    Raises ``ValueError`` when the two lists differ in length (a caller bug).
    """
    import torch

    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return []
    encoded = _encode_pairs(tokenizer, prompts, continuations)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    results: list[ContinuationScore | None] = [None] * len(encoded)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for rows in length_batches([len(seq) for seq, _ in encoded], max_tokens_per_batch):
                width = len(encoded[rows[-1]][0])
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    seq = encoded[i][0]
                    ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[r, : len(seq)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                token_logp = logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu()
                for r, i in enumerate(rows):
                    seq, boundary = encoded[i]
                    n = len(seq) - boundary
                    value = float(token_logp[r, boundary - 1 : len(seq) - 1].sum()) if n else 0.0
                    results[i] = ContinuationScore(value, n)
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def make_score_fn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  **kwargs: Any) -> ScoreFn:
    """``score(prompts, continuations)`` bound to one model (what rewards and inference call)."""

    def score(prompts: Sequence[str], continuations: Sequence[str]) -> list[ContinuationScore]:
        return score_continuations(model, tokenizer, prompts, continuations, **kwargs)

    return score
