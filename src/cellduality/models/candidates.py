"""Rank a closed set of answers by likelihood, sharing each prompt's forward pass among them.

Fast annotation asks "how probable is each candidate label after this cell's prompt?".
:func:`~cellduality.models.scoring.score_continuations` answers it with one sequence per
(cell, label), so a 113-token prompt is run ten times for ten labels. Here each prompt (plus a
shared answer prefix such as ``<answer>``) runs **once** with the KV cache; the candidates'
remaining tokens then run against that cache together as one trie (:class:`CandidateTree`: shared
label prefixes such as ``CD4+/`` run once, each node masked to see only the prompt and its
ancestors). On the quickstart model that is ~155 token-forwards per cell instead of ~1,250, in
two forward calls per batch; one call per candidate (the fallback for attention kernels that take
no 4D mask) ran at 87 instead of 133 cells/s on 2 CPU cores, mostly copying the KV cache.

The result is exactly ``log p(prefix + candidate | prompt)`` split into the prefix's part and the
candidate's part, provided the tokenizer splits ``prefix + candidate`` at their boundary; that is
checked once, and pairs that do not split cleanly are scored by ``score_continuations`` instead.
"""

from __future__ import annotations

import os
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


BATCH_TOKENS: dict[str, int | None] = {"cuda": None, "cpu": 4096}
"""Padded tokens per scoring batch by device; ``None``: from the GPU's free memory
(:func:`gpu_batch_tokens`). ``benchmarks/bench_annotate.py --batch-tokens`` sweeps it."""

GPU_BATCH_TOKENS_RANGE = (4096, 65536)
"""Bounds of :func:`gpu_batch_tokens`. On one H200 with the 94M ``base`` model, 65,536 tokens per
batch scored 2,032 against 1,814 Kang cells/s at 16,384 (docs/performance.md)."""


def gpu_batch_tokens(config: Any, free_bytes: int, dtype_bytes: int = 2, share: float = 0.25) -> int:
    """Tokens per scoring batch that fit in ``share`` of a GPU's free memory, for a model of ``config``.

    A scored token holds its keys and values in every layer, about three times over (the cache, the
    shared head's copy joined to it, the trie pass's copy), plus the activations of one layer:
    a 94M model can take the largest batches on any GPU, a 3B one on a 16 GB card gets a few
    thousand tokens instead of running out of memory.
    """
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv = 2 * int(config.num_hidden_layers) * kv_heads * head_dim * dtype_bytes
    activations = 4 * (hidden + int(getattr(config, "intermediate_size", 4 * hidden))) * dtype_bytes
    tokens = int(share * free_bytes / (3 * kv + activations))
    low, high = GPU_BATCH_TOKENS_RANGE
    return max(low, min(high, tokens))


def default_batch_tokens(model: Any) -> int:
    """:data:`BATCH_TOKENS` for the device ``model`` is on, a GPU's ``None`` resolved by its free memory."""
    import torch

    device = next(model.parameters()).device
    tokens = BATCH_TOKENS["cuda" if device.type == "cuda" else "cpu"]
    if tokens is None:
        tokens = gpu_batch_tokens(model.config, torch.cuda.mem_get_info(device)[0],
                                  next(model.parameters()).element_size())
    return tokens


def score_candidates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    prefixes: Sequence[str],
    candidates: Sequence[str],
    *,
    max_tokens_per_batch: int | None = None,
    on_batch: Any = None,
) -> CandidateScores:
    """Score every candidate continuation after ``format_prompt(prompt_i) + prefixes[i]``.

    ``candidates`` are the same for every row (a task's label set, already rendered with their
    trailing text, e.g. ``" CD14+ Monocyte </answer>"``). ``on_batch(n_rows)`` is called after each
    batch (progress bars). Rows are length-sorted into left-padded batches of at most
    ``max_tokens_per_batch`` padded tokens (default :data:`BATCH_TOKENS`: on a GPU what a quarter of
    its free memory holds, at most 65,536; 4,096 on a CPU, where smaller batches stay in cache: ~120
    against ~110 Kang cells/s on 2 cores); results come back in input order.
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
    if max_tokens_per_batch is None:
        max_tokens_per_batch = default_batch_tokens(model)
    # one trie for every batch; kernels without 4D masks run one call per candidate instead
    custom_masks = _takes_custom_masks(model)
    tree = CandidateTree.build(cand_ids) if custom_masks else None
    # the tokens every prompt starts with (instruction, candidate list) run once, not once per row;
    # each row keeps at least its last prompt token and its prefix, whose logits are read
    shared = len(os.path.commonprefix(seqs)) if custom_masks and n > 1 else 0  # works on token lists
    shared = min([shared] + [len(seq) - len(q) - 1 for seq, q in zip(seqs, prefix_ids, strict=True)])
    if shared < MIN_SHARED_TOKENS:
        shared = 0
    out_c = np.zeros((n, k))
    out_p = np.zeros(n)
    was_training = model.training
    pending: list[tuple[list[int], _HostCopy]] = []

    def finish(rows: list[int], copy: _HostCopy) -> None:
        totals, prefix = copy.wait()
        out_c[rows], out_p[rows] = totals, prefix
        if on_batch is not None:
            on_batch(len(rows))

    try:
        model.eval()
        with torch.no_grad():
            head = _SharedHead.run(model, seqs[0][:shared], device) if shared else None
            labels = _CandidateTensors.build(cand_ids, tree, device)
            # Each batch's results come back to the host while the next batch computes: no copy in
            # between waits on the device (on a GPU the host prepares batch i+1 during batch i).
            for rows in length_batches([len(seq) - shared for seq in seqs], max_tokens_per_batch):
                result = _score_batch(model, [seqs[i][shared:] for i in rows], [len(prefix_ids[i]) for i in rows],
                                      labels, pad, device, head)
                pending.append((rows, _HostCopy.start(*result)))
                if len(pending) > 1:
                    finish(*pending.pop(0))
            while pending:
                finish(*pending.pop(0))
    finally:
        model.train(was_training)
    return CandidateScores(out_c, out_p)


@dataclass
class _HostCopy:
    """Device results on their way to the host: pinned buffers and the event marking the copy's end."""

    tensors: tuple[Any, ...]
    event: Any

    @classmethod
    def start(cls, *tensors: Any) -> _HostCopy:
        import torch

        if tensors[0].device.type != "cuda":
            return cls(tensors, None)
        host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                     for t in tensors)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(tensors[0].device))  # the model's GPU, not the current one
        return cls(host, event)

    def wait(self) -> tuple[np.ndarray, ...]:
        if self.event is not None:
            self.event.synchronize()
        return tuple(t.numpy() for t in self.tensors)


@dataclass
class _CandidateTensors:
    """Per call, the candidates' index tensors on the device, built once (a host-to-device copy
    inside the batch loop would wait for the device and stop the host from running ahead)."""

    cand_ids: list[list[int]]
    first: Any  # [candidates]: each candidate's first token
    tree: Any = None  # (tokens, depths, sees, nodes, targets, owner) of the trie, or None

    @property
    def multi_token(self) -> bool:
        """Whether any candidate has tokens after its first (only then is a second pass needed)."""
        return any(len(c) > 1 for c in self.cand_ids)

    @classmethod
    def build(cls, cand_ids: list[list[int]], tree: CandidateTree | None, device: Any) -> _CandidateTensors:
        import torch

        out = cls(cand_ids, torch.tensor([c[0] for c in cand_ids], dtype=torch.long, device=device))
        if tree is not None and out.multi_token:
            owner = [c for c, path in enumerate(tree.paths) for _ in path]
            out.tree = (torch.tensor(tree.tokens, dtype=torch.long, device=device),
                        torch.tensor(tree.depths, dtype=torch.long, device=device),
                        torch.as_tensor(tree.sees, device=device),
                        torch.tensor([i for path in tree.paths for i in path], dtype=torch.long, device=device),
                        torch.tensor([t for c in cand_ids for t in c[1:]], dtype=torch.long, device=device),
                        torch.tensor(owner, dtype=torch.long, device=device))
        return out


@dataclass(frozen=True)
class CandidateTree:
    """The candidates' shared prefixes as a trie, run as one block of tokens after the prompt.

    Node ``i`` feeds token ``tokens[i]`` at ``depths[i]`` steps after the prompt and sees the
    prompt plus its own ancestors (``sees[i]``); ``paths[c]`` lists the nodes whose outputs predict
    candidate ``c``'s 2nd, 3rd, ... token (its 1st comes from the prompt's last position). Labels
    such as ``CD4+/…`` share their first tokens, so the trie is smaller than the candidates' sum.
    """

    tokens: list[int]
    depths: list[int]
    sees: np.ndarray  # [nodes, nodes] bool: ancestor-or-self
    paths: list[list[int]]

    @classmethod
    def build(cls, cand_ids: Sequence[list[int]]) -> CandidateTree:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        depths: list[int] = []
        parents: list[int] = []
        paths: list[list[int]] = []
        for cand in cand_ids:
            path = []
            for j in range(1, len(cand)):
                key = tuple(cand[:j])
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(cand[j - 1])
                    depths.append(j - 1)
                    parents.append(index.get(tuple(cand[: j - 1]), -1))
                path.append(index[key])
            paths.append(path)
        sees = np.zeros((len(tokens), len(tokens)), dtype=bool)
        for i, parent in enumerate(parents):  # parents come before their children
            if parent >= 0:
                sees[i] = sees[parent]
            sees[i, i] = True
        return cls(tokens, depths, sees, paths)


MIN_SHARED_TOKENS = 8
"""A common prompt head shorter than this is run with each row (not worth a separate pass)."""


@dataclass
class _SharedHead:
    """The KV cache of the tokens every prompt of a call starts with, computed once (batch of 1)."""

    length: int
    layers: list[tuple[Any, Any]]  # per layer: keys, values [1, heads, length, dim]

    @classmethod
    def run(cls, model: Any, ids: list[int], device: Any) -> _SharedHead:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=True, logits_to_keep=1,
              **{_cache_kwarg(model): cache})
        return cls(len(ids), [(layer.keys, layer.values) for layer in cache.layers])

    def cache_for(self, batch: int) -> Any:
        """A fresh cache holding the head once per row (rows extend it independently)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), i)
        return cache


def _takes_custom_masks(model: Any) -> bool:
    """Whether the attention accepts a 4D mask (eager/SDPA do; flash-attention kernels do not)."""
    return getattr(model.config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


def _score_batch(model: Any, seqs: list[list[int]], n_prefix: list[int], labels: _CandidateTensors, pad: int,
                 device: Any, head: _SharedHead | None = None) -> tuple[Any, Any]:
    """One left-padded prompt pass with the cache, then every candidate's remaining tokens in one pass.

    Returns, on the device, the candidates' log-probabilities ``[rows, candidates]`` and each
    row's prefix log-probability ``[rows]``. With a shared ``head``, ``seqs`` are the rows' own
    tokens after it: the padding sits between the head and each row's tokens, masked out, and
    positions continue from the head's length.
    """
    import torch
    from transformers import DynamicCache

    b, width = len(seqs), max(len(s) for s in seqs)
    host = np.zeros((b, 2 * width + 1), dtype=np.int64)  # ids | mask | prefix length: one copy to the device
    host[:, :width] = pad
    for r, seq in enumerate(seqs):
        host[r, width - len(seq):width] = seq
        host[r, 2 * width - len(seq):2 * width] = 1
    host[:, -1] = n_prefix
    packed = torch.from_numpy(host)
    if device.type == "cuda":  # pinned: the copy does not wait for the device's queued work
        packed = packed.pin_memory().to(device, non_blocking=True)
    ids, mask, prefix_len = packed[:, :width].contiguous(), packed[:, width:2 * width].contiguous(), packed[:, -1]
    skip = head.length if head is not None else 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + skip
    keep = max(n_prefix) + 1  # logits predicting the prefix tokens and the first candidate token
    cache = head.cache_for(b) if head is not None else DynamicCache()
    if head is not None:
        mask = torch.cat([torch.ones((b, skip), dtype=mask.dtype, device=device), mask], dim=1)
    kw = _cache_kwarg(model)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=keep,
                   **{kw: cache}).logits.float()
    logp = torch.log_softmax(logits, dim=-1)  # [b, keep, V]; position j predicts token width - keep + j + 1
    prefix = torch.zeros(b, dtype=logp.dtype, device=device)
    if keep > 1:  # every row's prefix log-probability in one gather
        m = keep - 1  # position t < m predicts token width - m + t; a row's prefix is its last n_prefix tokens
        per_token = logp[:, :m].gather(-1, ids[:, width - m:].unsqueeze(-1)).squeeze(-1)  # [b, m]
        own = torch.arange(m, device=device) >= (m - prefix_len)[:, None]
        prefix = torch.where(own, per_token, 0.0).sum(-1)
    totals = logp[:, -1][:, labels.first]  # [b, candidates]: each candidate's first token
    if labels.multi_token:
        if labels.tree is not None:
            totals = totals + _tree_logprobs(model, cache, kw, mask, positions[:, -1:], labels)
        else:
            totals = totals + _sequential_logprobs(model, cache, kw, mask, positions[:, -1:], labels.cand_ids)
    return totals, prefix


def _tree_logprobs(model: Any, cache: Any, kw: str, mask: Any, last_pos: Any, labels: _CandidateTensors) -> Any:
    """log p(candidate tokens 2..n) for every candidate from one forward pass over the trie.

    Each trie node attends to the (unpadded) prompt in the cache and to its own ancestors, at the
    position it would have in its candidate's own sequence: the same numbers as running each
    candidate after the prompt on its own, in one call instead of one per candidate (which also
    copied the whole KV cache each time).
    """
    import torch

    tokens, depths, sees, nodes, targets, owner = labels.tree
    b, width, n = mask.shape[0], mask.shape[1], tokens.numel()
    allowed = torch.cat([mask.bool()[:, None, :].expand(b, n, width), sees.expand(b, n, n)], dim=-1)[:, None]
    dtype = next(model.parameters()).dtype  # additive: eager attention adds the mask to its scores
    additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    logits = model(input_ids=tokens.expand(b, -1), attention_mask=additive, position_ids=last_pos + 1 + depths,
                   use_cache=True, **{kw: cache}).logits.float()
    logp = torch.log_softmax(logits, dim=-1)  # [b, nodes, V]
    per_token = logp[:, nodes, targets]  # [b, tokens after the first, all candidates]
    totals = torch.zeros((b, len(labels.cand_ids)), dtype=logp.dtype, device=mask.device)
    return totals.index_add_(1, owner, per_token)


def _sequential_logprobs(model: Any, cache: Any, kw: str, mask: Any, last_pos: Any,
                         cand_ids: list[list[int]]) -> Any:
    """The same numbers one candidate at a time, the cache cropped back after each (any attention kernel)."""
    import torch

    b, device = mask.shape[0], mask.device
    totals = torch.zeros((b, len(cand_ids)), dtype=torch.float32, device=device)
    for c, cand in enumerate(cand_ids):
        if len(cand) < 2:
            continue
        tail = torch.tensor(cand[:-1], dtype=torch.long, device=device).expand(b, -1)
        step = len(cand) - 1
        ext_mask = torch.cat([mask, torch.ones((b, step), dtype=mask.dtype, device=device)], dim=1)
        pos = last_pos + 1 + torch.arange(step, device=device)
        more = model(input_ids=tail, attention_mask=ext_mask, position_ids=pos, use_cache=True,
                     **{kw: cache}).logits.float()
        cache.crop(-step)  # negative: remove the candidate's tokens (every transformers version)
        target = torch.tensor(cand[1:], dtype=torch.long, device=device).expand(b, -1)
        totals[:, c] = torch.log_softmax(more, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)
    return totals


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
