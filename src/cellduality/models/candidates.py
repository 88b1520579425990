"""Rank a closed set of answers by likelihood, sharing each prompt's forward pass among them.

Fast annotation asks "how probable is each candidate label after this cell's prompt?".
:func:`~cellduality.models.scoring.score_continuations` answers it with one sequence per
(cell, label), so a 113-token prompt is run ten times for ten labels. Here each prompt (plus a
shared answer prefix such as ``<answer>``) runs **once** with the KV cache; each
candidate's few tokens then run against that cache (which is cropped back after each candidate).
On the quickstart model that is ~160 token-forwards per cell instead of ~1,250.

The result is exactly ``log p(prefix + candidate | prompt)`` split into the prefix's part and the
candidate's part, provided the tokenizer splits ``prefix + candidate`` at their boundary; that is
checked once, and pairs that do not split cleanly are scored by ``score_continuations`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cellduality.models.loading import format_prompt
from cellduality.models.scoring import length_batches

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class CandidateScores:
    """``candidates[i, k]``: log p(candidate k | prompt i, prefix i); ``prefix[i]``: log p(prefix i | prompt i)."""

    candidates: np.ndarray
    prefix: np.ndarray

    def posterior(self, temperature: float = 1.0) -> np.ndarray:
        """Softmax over the candidates of each row (the label posterior under a flat prior)."""
        z = self.candidates / temperature
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)


def _splits_cleanly(tokenizer: PreTrainedTokenizerBase, prefix: str, texts: Sequence[str],
                    ids: Sequence[list[int]]) -> bool:
    head = tokenizer(text=prefix, add_special_tokens=False)["input_ids"]
    return all(tokenizer(text=prefix + t, add_special_tokens=False)["input_ids"] == list(head) + list(i)
               for t, i in zip(texts, ids, strict=True))


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prefixes: Sequence[str],
    candidates: Sequence[str],
    *,
    max_tokens_per_batch: int = 16384,
    on_batch: Any = None,
) -> CandidateScores:
    """Score every candidate continuation after ``format_prompt(prompt_i) + prefixes[i]``.

    ``candidates`` are the same for every row (a task's label set, already rendered with their
    trailing text, e.g. ``" CD14+ Monocyte </answer>"``). ``on_batch(n_rows)`` is called after each
    batch (progress bars). Rows are length-sorted into left-padded batches of at most
    ``max_tokens_per_batch`` padded tokens; results come back in input order.
    """
    import torch

    if len(prompts) != len(prefixes):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
    n, k = len(prompts), len(candidates)
    if not n or not k:
        return CandidateScores(np.zeros((n, k)), np.zeros(n))
    cand_ids = [list(i) for i in tokenizer(text=list(candidates), add_special_tokens=False)["input_ids"]]
    if any(not i for i in cand_ids) or not _splits_cleanly(tokenizer, prefixes[0], candidates, cand_ids):
        return _score_pairwise(model, tokenizer, prompts, prefixes, candidates)
    prompt_ids = tokenizer(text=[format_prompt(tokenizer, p) for p in prompts])["input_ids"]
    prefix_ids = tokenizer(text=list(prefixes), add_special_tokens=False)["input_ids"]
    seqs = [list(p) + list(q) for p, q in zip(prompt_ids, prefix_ids, strict=True)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out_c = np.zeros((n, k))
    out_p = np.zeros(n)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for rows in length_batches([len(seq) for seq in seqs], max_tokens_per_batch):
                _score_batch(model, [seqs[i] for i in rows], [len(prefix_ids[i]) for i in rows], cand_ids, pad,
                             device, out_c, out_p, rows)
                if on_batch is not None:
                    on_batch(len(rows))
    finally:
        model.train(was_training)
    return CandidateScores(out_c, out_p)


def _score_batch(model: Any, seqs: list[list[int]], n_prefix: list[int], cand_ids: list[list[int]], pad: int,
                 device: Any, out_c: np.ndarray, out_p: np.ndarray, rows: list[int]) -> None:
    """One left-padded prompt pass with the cache, then one short pass per candidate."""
    import torch
    from transformers import DynamicCache

    b, width = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((b, width), pad, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[r, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(n_prefix) + 1  # logits predicting the prefix tokens and the first candidate token
    cache = DynamicCache()
    kw = _cache_kwarg(model)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep,
                   **{kw: cache}).logits.float()
    logp = torch.log_softmax(logits, dim=-1)  # [b, keep, V]; position j predicts token width - keep + j + 1
    for r, m in enumerate(n_prefix):
        if m:
            targets = ids[r, width - m:]
            out_p[rows[r]] = float(logp[r, keep - 1 - m: keep - 1].gather(-1, targets.unsqueeze(-1)).sum())
    first = logp[:, -1]
    last_pos = positions[:, -1:]
    for c, cand in enumerate(cand_ids):
        total = first[:, cand[0]].clone()
        if len(cand) > 1:
            tail = torch.tensor(cand[:-1], dtype=torch.long, device=device).expand(b, -1)
            step = len(cand) - 1
            ext_mask = torch.cat([mask, torch.ones((b, step), dtype=mask.dtype, device=device)], dim=1)
            pos = last_pos + 1 + torch.arange(step, device=device)
            more = model(input_ids=tail, attention_mask=ext_mask, position_ids=pos, use_cache=True,
                         **{kw: cache}).logits.float()
            cache.crop(-step)  # negative: remove the candidate's tokens (every transformers version)
            target = torch.tensor(cand[1:], dtype=torch.long, device=device).expand(b, -1)
            total += torch.log_softmax(more, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)
        out_c[rows, c] = total.cpu().numpy()


def _cache_kwarg(model: Any) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older), whichever ``forward`` takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _score_pairwise(model: Any, tokenizer: Any, prompts: Sequence[str], prefixes: Sequence[str],
                    candidates: Sequence[str]) -> CandidateScores:
    """The slow, always-correct route: one teacher-forced sequence per (row, candidate)."""
    from cellduality.models.scoring import score_continuations

    n, k = len(prompts), len(candidates)
    pairs = [(p, q + c) for p, q in zip(prompts, prefixes, strict=True) for c in candidates]
    full = score_continuations(model, tokenizer, [p for p, _ in pairs], [c for _, c in pairs])
    head = score_continuations(model, tokenizer, list(prompts), list(prefixes))
    prefix = np.array([h.logprob for h in head])
    return CandidateScores(np.array([s.logprob for s in full]).reshape(n, k) - prefix[:, None], prefix)
